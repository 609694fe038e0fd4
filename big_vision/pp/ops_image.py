"""Image ops (TensorFlow, one example at a time). Default key is "image".

Images are [h, w, c] tensors. Random ops draw from `tf.random` (unseeded, as in big_vision), so they give a fresh sample per example inside
`tf.data.Dataset.map`; in the train pipeline they switch to stateless draws keyed per example (`utils.random_seed`), which exact resume
replays.
Every factory checks its static arguments, so a bad value fails when the pp string is built, not inside tf.data.
"""

from collections.abc import Callable, Sequence

from big_vision.pp import native, registry, utils
from utils.tf_import import tf

RESIZE_METHODS = ("area", "bicubic", "bilinear", "gaussian", "lanczos3", "lanczos5", "mitchellcubic", "nearest")
VGG_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
VGG_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_size(op: str, name: str, size) -> tuple[int, int]:
    """`size` as (h, w) of positive ints, or a ValueError that names the op and the value."""
    hw = utils.maybe_repeat(size, 2)
    if len(hw) != 2 or not all(_is_int(s) and s > 0 for s in hw):
        raise ValueError(f"pp op {op}: {name} must be a positive int or a pair (h, w) of positive ints, got {size!r}")
    return hw


def _check_method(op: str, method: str) -> None:
    if method not in RESIZE_METHODS:
        raise ValueError(f"pp op {op}: unknown resize method {method!r}; expected one of {', '.join(RESIZE_METHODS)}")


def _check_area_range(op: str, area_min, area_max) -> None:
    if not 0 < area_min <= area_max <= 100:
        raise ValueError(f"pp op {op}: need 0 < area_min <= area_max <= 100 (percent of the image area), got area_min={area_min!r}, area_max={area_max!r}")


def _resize_keep_dtype(image: tf.Tensor, hw, method: str, antialias: bool) -> tf.Tensor:
    """`tf.image.resize`, then clip to the input dtype's range and cast back (float -> int truncates). A uint8 image resized bilinearly
    goes through the native kernel where it is available (`big_vision.pp.native`: the same bits, checked at its first use)."""
    dtype = image.dtype
    if dtype == tf.uint8 and method == "bilinear" and not antialias and image.shape.rank == 3:
        resize = native.get_resize_bilinear_uint8()
        if resize is not None:
            return resize(image, tf.cast(tf.convert_to_tensor(hw), tf.int32))
    out = tf.image.resize(image, hw, method=method, antialias=antialias)
    if dtype.is_integer:
        out = tf.clip_by_value(out, dtype.min, dtype.max)
    return tf.cast(out, dtype)


@registry.register("decode")
@utils.in_key_out_key()
def get_decode(channels: int = 3, precise: bool = False):
    """Decode JPEG/PNG/GIF/BMP bytes to uint8 [h, w, channels]; `precise` uses the exact (PIL-equal) JPEG IDCT."""
    if channels not in (0, 1, 3, 4):
        raise ValueError(f"pp op decode: channels must be 0 (as stored), 1, 3 or 4, got {channels!r}")

    def _decode(image):
        if precise:
            return tf.image.decode_jpeg(image, channels=channels, dct_method="INTEGER_ACCURATE")
        return tf.io.decode_image(image, channels=channels, expand_animations=False)

    return _decode


@registry.register("resize")
@utils.in_key_out_key()
def get_resize(size, method: str = "bilinear", antialias: bool = False):
    """Resize to `size` (int or (h, w)), ignoring aspect ratio; the dtype is kept (clipped, then cast)."""
    hw = _check_size("resize", "size", size)
    _check_method("resize", method)
    return lambda image: _resize_keep_dtype(image, hw, method, antialias)


def _make_resize_by_factor(op: str, target: int, side_fn: Callable, method: str, antialias: bool) -> Callable:
    """Scale both sides by `target / side_fn(h, w)`, rounding half to even as big_vision does."""
    if not (_is_int(target) and target > 0):
        raise ValueError(f"pp op {op}: the target side must be a positive int, got {target!r}")
    _check_method(op, method)

    def _resize(image):
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        factor = tf.constant(target, tf.float32) / side_fn(hw[0], hw[1])
        new_hw = tf.cast(tf.round(hw * factor), tf.int32)
        return _resize_keep_dtype(image, new_hw, method, antialias)

    return _resize


@registry.register("resize_small")
@utils.in_key_out_key()
def get_resize_small(smaller_size: int, method: str = "area", antialias: bool = False):
    """Resize keeping the aspect ratio so that the shorter side becomes `smaller_size`."""
    return _make_resize_by_factor("resize_small", smaller_size, tf.minimum, method, antialias)


@registry.register("resize_long")
@utils.in_key_out_key()
def get_resize_long(longer_size: int, method: str = "area", antialias: bool = True):
    """Resize keeping the aspect ratio so that the longer side becomes `longer_size`."""
    return _make_resize_by_factor("resize_long", longer_size, tf.maximum, method, antialias)


def _sample_box(image_shape: tf.Tensor, area_min, area_max, ratio_range) -> tuple[tf.Tensor, tf.Tensor]:
    """Inception-style box: `begin` and `size` ([y, x, 0] and [h, w, -1]) for an [h, w, c] image shape."""
    kw = {} if ratio_range is None else {"aspect_ratio_range": ratio_range}
    kw.update(
        bounding_boxes=tf.zeros([0, 0, 4], tf.float32), area_range=(area_min / 100, area_max / 100), min_object_covered=0, use_image_if_no_bounding_boxes=True
    )
    seed = utils.random_seed()
    if seed is None:
        begin, size, _ = tf.image.sample_distorted_bounding_box(image_shape, **kw)
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(image_shape, seed=seed, **kw)
    return begin, size


@registry.register("inception_crop")
@utils.in_key_out_key()
def get_inception_crop(size=None, area_min: float = 5, area_max: float = 100, method: str = "bilinear", antialias: bool = False):
    """Random crop covering area_min..area_max percent of the image (aspect 3/4..4/3), then an optional resize to `size`."""
    hw = None if size is None else _check_size("inception_crop", "size", size)
    _check_area_range("inception_crop", area_min, area_max)
    _check_method("inception_crop", method)

    def _crop(image):
        begin, box = _sample_box(tf.shape(image), area_min, area_max, None)
        crop = tf.slice(image, begin, box)
        crop.set_shape([None, None, image.shape[-1]])
        return crop if hw is None else _resize_keep_dtype(crop, hw, method, antialias)

    return _crop


@registry.register("decode_jpeg_and_inception_crop")
@utils.in_key_out_key()
def get_decode_jpeg_and_inception_crop(
    size=None, area_min: float = 5, area_max: float = 100, ratio_min: float = 0.75, ratio_max: float = 1.33, method: str = "bilinear", antialias: bool = False
):
    """`inception_crop` fused with JPEG decoding: only the sampled window is decoded (JPEG bytes only, uint8 RGB out)."""
    op = "decode_jpeg_and_inception_crop"
    hw = None if size is None else _check_size(op, "size", size)
    _check_area_range(op, area_min, area_max)
    _check_method(op, method)
    if not 0 < ratio_min <= ratio_max:
        raise ValueError(f"pp op {op}: need 0 < ratio_min <= ratio_max, got ratio_min={ratio_min!r}, ratio_max={ratio_max!r}")

    def _decode_crop(jpeg_bytes):
        begin, box = _sample_box(tf.image.extract_jpeg_shape(jpeg_bytes), area_min, area_max, (ratio_min, ratio_max))
        window = tf.stack([begin[0], begin[1], box[0], box[1]])
        crop = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3)
        return crop if hw is None else _resize_keep_dtype(crop, hw, method, antialias)

    return _decode_crop


@registry.register("random_crop")
@utils.in_key_out_key()
def get_random_crop(crop_size):
    """Uniformly placed crop of `crop_size` (int or (h, w)); a crop larger than the image is a runtime error."""
    hw = _check_size("random_crop", "crop_size", crop_size)

    def _crop(image):
        channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
        seed = utils.random_seed()
        if seed is None:
            return tf.image.random_crop(image, (hw[0], hw[1], channels))
        return tf.image.stateless_random_crop(image, (hw[0], hw[1], channels), seed=seed)

    return _crop


@registry.register("central_crop")
@utils.in_key_out_key()
def get_central_crop(crop_size=None):
    """Centred crop of `crop_size`; with no size, the largest centred square. Offsets round down: dy = (H - h) // 2."""
    hw = _check_size("central_crop", "crop_size", crop_size) if crop_size else None

    def _crop(image):
        shape = tf.shape(image)
        h, w = (tf.minimum(shape[0], shape[1]),) * 2 if hw is None else hw
        return tf.image.crop_to_bounding_box(image, (shape[0] - h) // 2, (shape[1] - w) // 2, h, w)

    return _crop


@registry.register("flip_lr")
@utils.in_key_out_key()
def get_flip_lr():
    """Mirror left-right with probability 1/2."""

    def _flip(image):
        seed = utils.random_seed()
        return tf.image.random_flip_left_right(image) if seed is None else tf.image.stateless_random_flip_left_right(image, seed=seed)

    return _flip


def _make_normalize(op: str, mean: Sequence[float], std: Sequence[float]) -> Callable:
    mean, std = tuple(utils.maybe_repeat(mean, 1)), tuple(utils.maybe_repeat(std, 1))
    if any(s == 0 for s in std):
        raise ValueError(f"pp op {op}: std must be non-zero, got {std!r}")
    return lambda image: (tf.cast(image, tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


@registry.register("vgg_value_range")
@utils.in_key_out_key()
def get_vgg_value_range(mean: Sequence[float] = VGG_MEAN, std: Sequence[float] = VGG_STD):
    """Per-channel `(float32(x) - mean) / std` with the ImageNet (VGG) statistics on the 0..255 scale."""
    return _make_normalize("vgg_value_range", mean, std)


@registry.register("clip_value_range")
@utils.in_key_out_key()
def get_clip_value_range():
    """`vgg_value_range` with the CLIP statistics."""
    return _make_normalize("clip_value_range", CLIP_MEAN, CLIP_STD)
