"""Helpers shared by op modules: key routing, size arguments, and per-example random seeds.

Random ops draw through `random_seed()`: inside `example_seed(seed)` (the train input pipeline wraps each example's pp in it) they use
stateless TF ops keyed by the example's seed and the op's place in the pp string, so an example's augmentation is a pure function of (seed,
epoch, example index), whatever the thread that maps it and whichever examples were skipped before it (exact resume). Outside (eval, tests,
tools) `random_seed()` is None and the ops draw from the stateful `tf.random` as big_vision does.
"""

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator

_SEEDS = threading.local()


@contextlib.contextmanager
def example_seed(seed) -> Iterator[None]:
    """While tracing one example's pp: random ops key their draws on `seed` (an int64 [2] tensor)."""
    stack = _SEEDS.__dict__.setdefault("stack", [])
    stack.append([seed, 0])
    try:
        yield
    finally:
        stack.pop()


def random_seed():
    """A fresh stateless seed for the next random draw of this example, or None outside `example_seed`.

    Each call folds a counter into the example seed; the counter follows the order in which ops are traced, which is fixed by the pp string,
    so draws are reproducible.
    """
    stack = _SEEDS.__dict__.get("stack")
    if not stack:
        return None
    from utils.tf_import import tf

    entry = stack[-1]
    entry[1] += 1
    return tf.random.experimental.stateless_fold_in(entry[0], entry[1])


def uniform(shape, minval, maxval, dtype):
    """`tf.random.uniform`, stateless inside `example_seed`."""
    from utils.tf_import import tf

    seed = random_seed()
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)


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
