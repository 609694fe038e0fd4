"""The argument helpers big_vision config files call (`bvcc.parse_arg`, `bvcc.autotype`, ...), with upstream's semantics.

`parse_arg("variant=S/16,runlocal", variant="B/16", runlocal=False)` -> ConfigDict(variant="S/16", runlocal=True): values are
converted to the default's type (bools strictly: true/false/empty), a lone value names a bool option or sets the first option,
and names not in the spec are an error unless `lazy`, which types them with `autotype`.
"""

import ml_collections as mlc


def autotype(text: str):
    """'true'/'false' -> bool, else int, else float, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _strict_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", ""):
        raise ValueError(f"config arg {text!r} is not a boolean (true, false or empty)")
    return text.lower() == "true"


def _converter(default):
    if isinstance(default, bool):
        return default, _strict_bool
    if isinstance(default, tuple | list):
        if len(default) != 2 or not isinstance(default[1], type):
            raise ValueError(f"a config arg spec given as a pair must be (default, type), got {default!r}")
        return default[0], default[1]
    return default, type(default)


def parse_arg(arg: str | None, lazy: bool = False, **spec) -> mlc.ConfigDict:
    """The options of a config's `get_config(arg)` string, `name=value` pairs split by commas, typed by `spec` (see the module doc)."""
    arg = arg or ""
    typed = {name: _converter(default) for name, default in spec.items()}
    if arg and "," not in arg and "=" not in arg:
        arg = f"{arg}=True" if arg in typed or not typed else f"{next(iter(typed))}={arg}"
    given = {}
    for item in filter(None, arg.split(",")):
        name, _, value = item.partition("=")
        given[name] = value if "=" in item else "True"
    out = mlc.ConfigDict(type_safe=False)
    for name, (default, convert) in typed.items():
        out[name] = convert(given.pop(name)) if name in given else default
    if given and not lazy:
        raise ValueError(f"config args {given} are not options of this config (it takes {', '.join(typed) or 'none'})")
    for name, value in given.items():
        out[name] = autotype(value)
    return out


def pack_arg(**kw) -> str:
    """The `name=value,...` string `parse_arg` reads."""
    for value in kw.values():
        if "," in str(value):
            raise ValueError(f"config arg value {value!r} holds a comma, which separates args")
    return ",".join(f"{k}={v}" for k, v in kw.items())


def arg(**kw) -> dict:
    return {"config_arg": pack_arg(**kw), **kw}


def input_for_quicktest(config_input, quicktest: bool) -> None:
    if quicktest:
        config_input.batch_size, config_input.shuffle_buffer_size, config_input.cache_raw = 8, 10, False
