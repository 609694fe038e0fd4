"""Helpers shared by op modules: key routing and size arguments."""

import functools
import inspect
from collections.abc import Callable


def maybe_repeat(x, n: int) -> tuple:
    """`224` -> `(224, 224)`; lists and tuples pass through as tuples."""
    if isinstance(x, list | tuple):
        return tuple(x)
    return (x,) * n


def in_key_out_key(indefault: str = "image", outdefault: str = "image") -> Callable:
    """Give a single-tensor op the `key`, `inkey` and `outkey` keyword arguments.

    The wrapped factory returns `tensor -> tensor`; the op reads `data[key or inkey]` and writes
    `data[key or outkey]`, leaving all other keys alone.
    """

    def decorator(factory: Callable) -> Callable:
        @functools.wraps(factory)
        def make_op(*args, key: str | None = None, inkey: str = indefault, outkey: str = outdefault, **kw):
            fn = factory(*args, **kw)
            src, dst = key or inkey, key or outkey

            def op(data: dict) -> dict:
                if src not in data:
                    raise KeyError(f"pp op {factory.__name__} reads key {src!r}, but the example has only {sorted(data)}")
                data[dst] = fn(data[src])
                return data

            return op

        # Advertise the routing keywords so the builder can check arguments against the real signature.
        sig = inspect.signature(factory)
        routing = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in (("key", None), ("inkey", indefault), ("outkey", outdefault))]
        params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        make_op.__signature__ = sig.replace(parameters=params + routing)
        return make_op

    return decorator
