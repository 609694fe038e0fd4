"""Preprocessing strings in big_vision syntax: `decode|resize(224)|value_range(-1, 1)`.

`builder.get_preprocess_fn(pp_str)` turns a string into a `dict -> dict` function on one example.
Op modules register their ops on import; `builder` imports all of ours.
"""
