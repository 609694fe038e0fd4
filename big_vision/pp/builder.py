"""Parse a pp string into a function over one example (a flat dict of tensors).

Grammar (big_vision's): segments split on `|`, empty ones skipped; each segment is an op name or a
call whose arguments are Python literals (`ast.literal_eval`, never `eval`). Every op is built when
the string is parsed, so a bad name or argument fails at start-up, not inside tf.data.
"""

import ast
import inspect
from collections.abc import Callable

from big_vision.pp import ops_general, ops_image, randaug, registry  # noqa: F401  (register the ops)


def _parse_segment(segment: str) -> tuple[str, tuple, dict]:
    try:
        node = ast.parse(segment.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"pp syntax error in {segment!r}: expected `op` or `op(literal, key=literal)`") from None
    if isinstance(node, ast.Name):
        return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"pp segment {segment!r} is not an op name or an op call")
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise ValueError(f"pp arguments in {segment!r} must be Python literals (numbers, strings, tuples, lists, dicts, True/False/None)") from None
    return node.func.id, args, kwargs


def _build_op(segment: str) -> Callable[[dict], dict]:
    name, args, kwargs = _parse_segment(segment)
    factory = registry.get_op_factory(name)
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"pp op {segment.strip()!r}: {e}; signature is {name}{inspect.signature(factory)}") from None
    return factory(*args, **kwargs)


def get_preprocess_fn(pp_str: str | None) -> Callable[[dict], dict]:
    """Build `example -> example` from a pp string; None or "" is the identity."""
    segments = [s for s in (pp_str or "").split("|") if s.strip()]
    ops = [(s.strip(), _build_op(s)) for s in segments]

    def preprocess(data: dict) -> dict:
        data = dict(data)
        for _, op in ops:
            data = op(data)
        if not isinstance(data, dict):
            raise ValueError(f"pp string {pp_str!r} must produce a dict, got {type(data).__name__}")
        return data

    return preprocess
