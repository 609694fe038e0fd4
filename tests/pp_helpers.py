"""Shared by the pp op tests (tests/test_pp_ops_image.py, tests/test_pp_ops_general.py, tests/test_pp_ops_randaug.py): run a pp string
eagerly or inside tf.data.Dataset.map, and test images.
"""

import numpy as np
import skimage.data

from big_vision.pp import builder
from utils.tf_import import tf

MODES = ("eager", "tf_data")


def run_n(pp, data: dict, mode: str, n: int = 1, signature: dict | None = None) -> list[dict]:
    """Apply a pp string (or an example -> example function) `n` times to `data`, eagerly or as `Dataset.map`; numpy results."""
    fn = builder.get_preprocess_fn(pp) if isinstance(pp, str) else pp
    if mode == "eager":
        specs = signature or tf.nest.map_structure(lambda _: None, data)
        outs = [fn(tf.nest.map_structure(lambda v, s: tf.constant(v, None if s is None else s.dtype), data, specs)) for _ in range(n)]
        return [tf.nest.map_structure(lambda t: t.numpy(), o) for o in outs]
    if signature is None:
        ds = tf.data.Dataset.from_tensors(data)
    else:  # from_generator keeps the unknown dimensions of `signature`, as TFDS does for variable-length features
        ds = tf.data.Dataset.from_generator(lambda: iter([data]), output_signature=signature)
    return list(ds.repeat(n).map(fn).as_numpy_iterator())


def run(pp, data: dict, mode: str, signature: dict | None = None) -> dict:
    return run_n(pp, data, mode, 1, signature)[0]


def image_fn(fn):
    """Wrap a tensor -> tensor function as an example -> example function on the "image" key."""
    return lambda data: {**data, "image": fn(data["image"])}


def coord_image(h: int, w: int) -> np.ndarray:
    """uint8 [h, w, 3]: channel 0 is the row, channel 1 the column, so any crop tells where it came from."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, (rows * 7 + cols * 3) % 256], axis=-1).astype(np.uint8)


def load_photo() -> np.ndarray:
    """A 64x64 RGB photo with a full tonal range."""
    return np.ascontiguousarray(skimage.data.astronaut()[::8, ::8])


def find_window(big: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    h, w = crop.shape[:2]
    return [(y, x) for y in range(big.shape[0] - h + 1) for x in range(big.shape[1] - w + 1) if np.array_equal(big[y : y + h, x : x + w], crop)]
