"""Name -> op factory registry for preprocessing ops."""

import difflib
from collections.abc import Callable

_OPS: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Register an op factory under `name`; a second op with the same name is a bug."""

    def decorator(factory: Callable) -> Callable:
        if name in _OPS:
            raise KeyError(f"pp op {name!r} is registered twice")
        _OPS[name] = factory
        return factory

    return decorator


def list_ops() -> list[str]:
    return sorted(_OPS)


def get_op_factory(name: str) -> Callable:
    if name in _OPS:
        return _OPS[name]
    close = difflib.get_close_matches(name, _OPS, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known ops: {', '.join(list_ops())}"
    raise ValueError(f"unknown pp op {name!r}{hint}")
