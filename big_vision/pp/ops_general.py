"""General ops: value ranges, labels, key selection and copying, shapes, random choice along axis 0.

Every factory checks its static arguments, so a bad value fails when the pp string is built, not inside tf.data.
"""

import functools

import numpy as np

from big_vision.pp import registry, utils
from utils.tf_import import tf

PAD_WHERE = ("after", "before", "both")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read(data: dict, key: str, op: str):
    if key not in data:
        raise KeyError(f"pp op {op} reads key {key!r}, but the example has only {sorted(data)}")
    return data[key]


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, list | tuple) else (x,)


@registry.register("value_range")
@utils.in_key_out_key()
def get_value_range(vmin: float = -1, vmax: float = 1, in_min: float = 0, in_max: float = 255.0, clip_values: bool = False):
    """Map [in_min, in_max] linearly to [vmin, vmax] in float32; clip only when asked. `in_min`/`in_max` may be per-channel lists."""
    if vmin == vmax:
        raise ValueError(f"pp op value_range: vmin and vmax must differ, got vmin={vmin!r}, vmax={vmax!r}")
    lo, hi = _as_tuple(in_min), _as_tuple(in_max)
    n_channels = max(len(lo), len(hi))
    if {len(lo), len(hi)} - {1, n_channels}:
        raise ValueError(f"pp op value_range: in_min and in_max must have the same length (or one be a scalar), got in_min={in_min!r}, in_max={in_max!r}")
    lo, hi = (t * n_channels if len(t) == 1 else t for t in (lo, hi))
    if any(a == b for a, b in zip(lo, hi, strict=True)):
        raise ValueError(f"pp op value_range: in_min and in_max must differ (per channel), got in_min={in_min!r}, in_max={in_max!r}")
    if clip_values and vmin > vmax:
        raise ValueError(f"pp op value_range: clip_values=True needs vmin < vmax (big_vision would set every value to vmin), got vmin={vmin!r}, vmax={vmax!r}")

    def _value_range(x):
        short = get_exact_short_form(x.dtype, vmin, vmax, in_min, in_max)
        x = tf.cast(x, tf.float32)
        if short is not None:  # fewer passes over the batch, the same float32 values as the formula below
            lo_t, div_t, mul_t = (None if v is None else tf.constant(v) for v in short)
            x = x if lo_t is None else x - lo_t
            x = x / div_t if div_t is not None else x * mul_t
            x = x + tf.constant(np.float32(vmin))
        else:
            in_min_t, in_max_t = tf.constant(in_min, tf.float32), tf.constant(in_max, tf.float32)
            x = (x - in_min_t) / (in_max_t - in_min_t)
            x = vmin + x * (vmax - vmin)
        return tf.clip_by_value(x, vmin, vmax) if clip_values else x

    return _value_range


def get_value_range_formula(x: np.ndarray, vmin: float, vmax: float, in_min, in_max) -> np.ndarray:
    """big_vision's value_range on float32 values, step by step as TF rounds it: vmin + ((x - in_min) / (in_max - in_min)) * (vmax - vmin)."""
    lo, hi = np.asarray(in_min, np.float32), np.asarray(in_max, np.float32)
    q = (x.astype(np.float32) - lo) / (hi - lo)
    return np.float32(vmin) + q * np.float32(vmax - vmin)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (-0.0 is not 0.0)."""
    return a.shape == b.shape and np.array_equal(a.astype(np.float32).view(np.uint32), b.astype(np.float32).view(np.uint32))


def _scalar_if_one(v: np.ndarray) -> np.ndarray:
    return v.reshape(()) if v.size == 1 else v


@functools.lru_cache(maxsize=256)
def _get_exact_short_form(dtype_name: str, vmin: float, vmax: float, in_min: tuple, in_max: tuple):
    info = np.iinfo(dtype_name)
    values = np.arange(info.min, info.max + 1, dtype=np.float32)[:, None]  # every value of the dtype, exact in float32
    want = get_value_range_formula(values, vmin, vmax, in_min, in_max)
    lo32 = np.asarray(in_min, np.float32)
    lo = None if not lo32.any() else _scalar_if_one(lo32)  # x - 0 is x
    shifted = values if lo is None else values - lo
    hi_lo = np.asarray(in_max, np.float64) - np.asarray(in_min, np.float64)
    div = np.asarray(hi_lo / (vmax - vmin), np.float32)  # (x / d) * m is x / (d / m) when m is a power of two
    if _same_bits(shifted / div + np.float32(vmin), want):
        return lo, _scalar_if_one(div), None
    mul = np.asarray((vmax - vmin) / hi_lo, np.float32)
    if _same_bits(shifted * mul + np.float32(vmin), want):
        return lo, None, _scalar_if_one(mul)
    return None


def get_exact_short_form(dtype: tf.DType, vmin: float, vmax: float, in_min, in_max):
    """(in_min or None, divisor or None, multiplier or None), float32, when vmin + (x [- in_min]) / divisor (or * multiplier) gives exactly the
    formula's value for every value of an 8-bit integer dtype (all 256 are checked), else None. Images arrive as uint8: for value_range(-1, 1)
    that is x / 127.5 - 1, two passes over the batch instead of four, bit-identical."""
    if dtype not in (tf.uint8, tf.int8):
        return None
    lo, hi = tuple(np.atleast_1d(in_min).astype(float).tolist()), tuple(np.atleast_1d(in_max).astype(float).tolist())
    return _get_exact_short_form(dtype.name, float(vmin), float(vmax), lo, hi)


@registry.register("onehot")
def get_onehot(depth: int, key: str = "labels", key_result: str | None = None, multi: bool = True, on: float = 1.0, off: float = 0.0):
    """One-hot of `data[key]` into `data[key_result or key]`; a list of labels becomes one multi-hot vector when `multi`.

    dtypes follow big_vision: a multi-hot vector is float32; a one-hot (a scalar label, or `multi=False`) takes the type of `on`/`off` (two floats
    give float32, two ints int32, two bools bool), so `on` and `off` must have the same type.
    Multi-hot: duplicates count once, an empty list gives all `off`, an index outside [0, depth) is a runtime error, labels of rank 2 or more are
    refused (big_vision's scatter aborts the process on them). Single labels use `tf.one_hot`, where an out-of-range index gives all `off`.
    """
    if not (_is_int(depth) and depth > 0):
        raise ValueError(f"pp op onehot: depth must be a positive int, got {depth!r}")
    if not (isinstance(on, bool | int | float) and type(on) is type(off)):
        raise ValueError(
            f"pp op onehot: on and off must be numbers of the same type (two floats give a float32 one-hot, two ints int32), got on={on!r}, off={off!r}"
        )

    def _onehot(data):
        labels = tf.cast(_read(data, key, "onehot"), tf.int64)
        if labels.shape.rank is None:
            raise ValueError(f"pp op onehot: key {key!r} has unknown rank")
        if labels.shape.rank > 1 and multi:
            raise ValueError(
                f"pp op onehot: multi-hot needs labels of rank 0 or 1, key {key!r} has shape {labels.shape}; use multi=False or reshape((-1,), key={key!r})"
            )
        if labels.shape.rank == 1 and multi:
            hits = tf.scatter_nd(labels[:, None], tf.ones_like(labels, tf.float32), [depth])
            data[key_result or key] = tf.minimum(hits, 1.0) * (float(on) - float(off)) + float(off)
        else:
            data[key_result or key] = tf.one_hot(labels, depth, on_value=on, off_value=off)
        return data

    return _onehot


@registry.register("keep")
def get_keep(*keys: str):
    """Keep only `keys` (missing keys are ignored, as in big_vision)."""
    return lambda data: {k: v for k, v in data.items() if k in keys}


@registry.register("drop")
def get_drop(*keys: str):
    """Drop `keys` (missing keys are ignored)."""
    return lambda data: {k: v for k, v in data.items() if k not in keys}


@registry.register("copy")
def get_copy(inkey: str, outkey: str):
    """`data[outkey]` = `data[inkey]`, with nested dicts/lists rebuilt so later in-place ops on one key leave the other alone."""
    if not (isinstance(inkey, str) and isinstance(outkey, str)):
        raise ValueError(f"pp op copy: inkey and outkey must be strings, got inkey={inkey!r}, outkey={outkey!r}")

    def _copy(data):
        data[outkey] = tf.nest.map_structure(lambda t: t, _read(data, inkey, "copy"))
        return data

    return _copy


@registry.register("squeeze_last_dim")
@utils.in_key_out_key()
def get_squeeze_last_dim():
    """Drop a trailing dimension of size 1 (for example [h, w, 1] -> [h, w])."""
    return lambda x: tf.squeeze(x, axis=-1)


@registry.register("pad_to_shape")
@utils.in_key_out_key()
def get_pad_to_shape(shape, pad_value=0, where: str = "after"):
    """Pad each dimension up to `shape[i]` (None leaves it alone) with `pad_value`; `where` puts the padding after, before, or split (before = diff // 2)."""
    if not (isinstance(shape, list | tuple) and all(s is None or (_is_int(s) and s >= 0) for s in shape)):
        raise ValueError(f"pp op pad_to_shape: shape must be a list of non-negative ints or None, got {shape!r}")
    if where not in PAD_WHERE:
        raise ValueError(f"pp op pad_to_shape: where must be one of {', '.join(PAD_WHERE)}, got {where!r}")

    def _pad(x):
        if x.shape.rank != len(shape):
            raise ValueError(f"pp op pad_to_shape: target shape {list(shape)} has rank {len(shape)}, but the tensor has shape {x.shape}")
        dims = [i for i, s in enumerate(shape) if s is not None]
        size = tf.shape(x)
        diffs = tf.constant([shape[i] for i in dims], tf.int32) - tf.gather(size, dims)
        check = tf.debugging.assert_non_negative(diffs, message=f"pp op pad_to_shape: the tensor is larger than the target shape {list(shape)}")
        with tf.control_dependencies([check] if check is not None else []):
            before = {"after": tf.zeros_like(diffs), "before": diffs, "both": diffs // 2}[where]
            pairs = tf.stack([before, diffs - before], axis=1)
        paddings = tf.scatter_nd(tf.constant([[i] for i in dims], tf.int32), pairs, [len(shape), 2]) if dims else tf.zeros([len(shape), 2], tf.int32)
        out = tf.pad(x, paddings, constant_values=tf.constant(pad_value, x.dtype))
        out.set_shape([s if s is not None else d for s, d in zip(shape, x.shape.as_list(), strict=True)])
        return out

    return _pad


@registry.register("reshape")
@utils.in_key_out_key()
def get_reshape(new_shape):
    """`tf.reshape` to `new_shape` (at most one -1); the dtype is kept."""
    if not (isinstance(new_shape, list | tuple) and all(_is_int(s) and s >= -1 for s in new_shape) and list(new_shape).count(-1) <= 1):
        raise ValueError(f"pp op reshape: new_shape must be a list of non-negative ints with at most one -1, got {new_shape!r}")
    return lambda x: tf.reshape(x, new_shape)


def _broadcasts_to(shape: list[int], target: list[int]) -> bool:
    """Whether `tf.broadcast_to` takes a static `shape` to `target`."""
    return len(shape) <= len(target) and all(a in (1, b) for a, b in zip(reversed(shape), reversed(target), strict=False))


@registry.register("setdefault")
def get_setdefault(key: str, value):
    """Give `key` the `value` (a scalar or a nested list, as `tf.constant` takes it) when it is missing or empty.

    A missing key becomes `tf.constant(value)`. An empty tensor becomes `value`, in its dtype, broadcast to its static shape with 0/None dimensions
    set to 1 (big_vision's rule): `setdefault("eos", [1])` on a [None] key gives [1], `[0.1, 0.2, 0.3, 0.4]` on a [None, 4] key gives a [1, 4].
    """
    try:
        value_shape = tf.constant(value).shape.as_list()
    except (TypeError, ValueError):
        raise ValueError(f"pp op setdefault: value must be a scalar or a rectangular list of numbers, strings or bools, got {value!r}") from None
    if 0 in value_shape:
        raise ValueError(f"pp op setdefault: value {value!r} is empty, so it cannot fill an empty tensor; give at least one element")

    def _setdefault(data):
        if key not in data:
            data[key] = tf.constant(value)
            return data
        x = data[key]
        if x.shape.rank is None:
            raise ValueError(f"pp op setdefault: key {key!r} has unknown rank")
        fill_shape = [d or 1 for d in x.shape.as_list()]
        if not _broadcasts_to(value_shape, fill_shape):
            raise ValueError(f"pp op setdefault: value {value!r} (shape {value_shape}) cannot fill key {key!r} of shape {x.shape} (filled as {fill_shape})")
        try:
            fill = tf.constant(value, x.dtype)
        except (TypeError, ValueError):
            raise ValueError(f"pp op setdefault: value {value!r} does not convert to the dtype {x.dtype.name} of key {key!r}") from None
        fill = tf.broadcast_to(fill, fill_shape)
        data[key] = tf.cond(tf.size(x) > 0, lambda: x, lambda: fill)
        return data

    return _setdefault


def _choice_sizes(n) -> tuple[int, int | None]:
    """(min_n, max_n) of a `choice` size argument; max_n is None for "single"."""
    if n == "single":
        return 1, None
    if _is_int(n) and n > 0:
        return n, n
    if isinstance(n, list | tuple) and len(n) == 2 and all(_is_int(v) for v in n) and 0 <= n[0] <= n[1]:
        return n[0], n[1]
    raise ValueError(f'pp op choice: n must be "single", a positive int, or a pair [lo, hi] with 0 <= lo <= hi, got {n!r}')


@registry.register("choice")
def get_choice(n="single", key=None, fewer_ok: bool = False, inkey=None, outkey=None):
    """Draw the same random rows (axis 0) from every in-key.

    `n="single"` picks one row and drops that axis; an int picks that many distinct rows in their original order; [lo, hi] picks a random
    count in lo..hi (inclusive, capped at the number of rows).
    `key`/`inkey` may be a string or a list; `outkey` may be a list or a string containing "{key}". Unless `fewer_ok`, fewer rows than
    needed is a runtime error.
    """
    min_n, max_n = _choice_sizes(n)
    inkeys = key or inkey
    if not inkeys:
        raise ValueError("pp op choice: give the keys to choose from with key= or inkey=")
    inkeys = [inkeys] if isinstance(inkeys, str) else list(inkeys)
    outkeys = key or outkey or inkeys
    if isinstance(outkeys, str):
        if "{key}" in outkeys:
            outkeys = [outkeys.replace("{key}", k) for k in inkeys]
        else:
            outkeys = [outkeys]
    if len(outkeys) != len(inkeys):
        raise ValueError(
            f"pp op choice: {len(inkeys)} in-keys {inkeys} but {len(outkeys)} out-keys {list(outkeys)};"
            " use a list of the same length or a template with {key}"
        )

    def _choice(data):
        xs = [_read(data, k, "choice") for k in inkeys]
        too_few = f"pp op choice: fewer than {min_n} rows to choose from in {inkeys} (pass fewer_ok=True to allow)"
        if not fewer_ok and xs[0].shape.rank and xs[0].shape[0] is not None and xs[0].shape[0] < min_n:
            raise ValueError(too_few)
        n_rows = tf.shape(xs[0])[0]
        checks = [tf.debugging.assert_equal(tf.shape(x)[0], n_rows, message=f"pp op choice: keys {inkeys} differ in their first dimension") for x in xs[1:]]
        if not fewer_ok:
            checks.append(tf.debugging.assert_greater_equal(n_rows, min_n, message=too_few))
        with tf.control_dependencies([c for c in checks if c is not None]):
            n_rows = tf.identity(n_rows)
        if max_n is None:
            idx = utils.uniform([], 0, n_rows, dtype=tf.int32)
            outs = [tf.gather(x, idx) for x in xs]
        else:
            count = utils.uniform([], min_n, max_n + 1, dtype=tf.int32) if min_n < max_n else tf.constant(max_n)
            seed = utils.random_seed()
            order = tf.random.shuffle(tf.range(n_rows)) if seed is None else tf.argsort(tf.random.stateless_uniform([n_rows], seed))
            idx = tf.sort(order[: tf.minimum(count, n_rows)])
            outs = [tf.gather(x, idx) for x in xs]
            if _is_int(n) and not fewer_ok:
                for out in outs:
                    out.set_shape([n] + out.shape.as_list()[1:])
        for k, out in zip(outkeys, outs, strict=True):
            data[k] = out
        return data

    return _choice
