"""General ops: value ranges, key selection."""

from big_vision.pp import registry, utils
from big_vision.tf_import import tf


@registry.register("value_range")
@utils.in_key_out_key()
def get_value_range(vmin: float = -1, vmax: float = 1, in_min: float = 0, in_max: float = 255.0, clip_values: bool = False):
    """Map [in_min, in_max] linearly to [vmin, vmax] in float32; clip only when asked."""

    def _value_range(x):
        x = tf.cast(x, tf.float32)
        x = (x - in_min) / (tf.constant(in_max, tf.float32) - in_min)
        x = vmin + x * (vmax - vmin)
        return tf.clip_by_value(x, vmin, vmax) if clip_values else x

    return _value_range


@registry.register("keep")
def get_keep(*keys: str):
    """Keep only `keys` (missing keys are ignored, as in big_vision)."""
    return lambda data: {k: v for k, v in data.items() if k in keys}


@registry.register("drop")
def get_drop(*keys: str):
    """Drop `keys` (missing keys are ignored)."""
    return lambda data: {k: v for k, v in data.items() if k not in keys}
