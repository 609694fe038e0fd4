"""RandAugment (Cubuk et al., arXiv:1909.13719) in plain TensorFlow: the `randaug(num_layers, magnitude)` pp op.

Matches big_vision's archived op (the TPU EfficientNet autoaugment code built on tensorflow_addons, which has no builds for current TF):
each of `num_layers` layers picks one of 16 ops uniformly and always applies it, with arguments from the shared magnitude M (L = M / 10, see `get_level_args`).
Images are uint8 [h, w, 3]; apply the op before `value_range`. Geometric ops sample nearest pixels and fill uncovered pixels with 128, as does Cutout.
The op functions are public so tests and other ops can call them with fixed arguments; they take scalar Python or tensor arguments.
With fixed arguments every op gives big_vision's output bit for bit, quirks included (Contrast's size-dependent gray, Posterize and Solarize
arguments wrapped to uint8 at high M); tests/test_pp_upstream_parity.py holds vectors computed with big_vision's code.
"""

import functools
import math
from collections.abc import Callable

from big_vision.pp import registry, utils
from utils.tf_import import tf

FILL_VALUE = 128
OP_NAMES = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


def blend(image1: tf.Tensor, image2: tf.Tensor, factor: float) -> tf.Tensor:
    """`image1 + factor * (image2 - image1)` as uint8: truncated for 0 < factor < 1 (stays in range), clipped then truncated otherwise."""
    if factor == 0.0:
        return tf.convert_to_tensor(image1)
    if factor == 1.0:
        return tf.convert_to_tensor(image2)
    a, b = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    mixed = a + factor * (b - a)
    if 0.0 < factor < 1.0:
        return tf.cast(mixed, tf.uint8)
    return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretch each channel so its min becomes 0 and its max 255 (float32 scale, truncating cast); flat channels are left alone."""
    x = tf.cast(image, tf.float32)
    lo, hi = tf.reduce_min(x, axis=[0, 1]), tf.reduce_max(x, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)  # hi - lo >= 1 wherever it is used; the max only keeps flat channels free of inf
    stretched = tf.cast(tf.clip_by_value(x * scale - lo * scale, 0.0, 255.0), tf.uint8)
    return tf.where(hi > lo, stretched, image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL's equalize on one uint8 [h, w] channel: a lookup table from the histogram's cumulative counts."""
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256, dtype=tf.int32)
    # PIL leaves the count of the highest value present out of the step, so the top value maps to 255 or less.
    step = (tf.reduce_sum(hist) - tf.gather(hist, tf.reduce_max(values))) // 255
    lut = tf.clip_by_value((tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1), 0, 255)
    return tf.cast(tf.where(step > 0, tf.gather(lut, values), values), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation per channel (PIL's ImageOps.equalize)."""
    return tf.stack([_equalize_channel(image[:, :, c]) for c in range(image.shape[-1])], axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255 - tf.convert_to_tensor(image)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
    """Keep the top `bits` bits, with big_vision's shift of `8 - bits` as TF applies it to uint8.

    TF converts the shift to uint8 (so -1 wraps to 255) and its shift kernel clamps it to 0..7: bits=0 keeps the top bit (values {0, 128}), and so
    does bits >= 9 (magnitude >= 22.5 in randaug), where the shift is negative.
    """
    shift = min((8 - bits) % 256, 7)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
    """Invert the pixels at or above `threshold` (PIL semantics: 0 inverts all, 256 none)."""
    return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: int, threshold: int = 128) -> tf.Tensor:
    """Add `addition` (clipped to 0..255) to the pixels below `threshold`."""
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
    return tf.where(image < threshold, added, image)


def _gray_rgb(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Saturation: blend from the image's grayscale version (factor 0) to the image (1) and beyond."""
    return blend(_gray_rgb(image), image, factor)


def contrast(image: tf.Tensor, factor: float, true_mean: bool = False) -> tf.Tensor:
    """Blend from a flat gray image to the image.

    The gray level is big_vision's: it divides the sum of the grayscale histogram (the pixel count) by 256 instead of taking the histogram's mean,
    so it is min(h w // 256, 255) whatever the content (196 for 224x224). `true_mean=True` uses the mean gray level (truncated to uint8)
    instead, as PIL's ImageEnhance.Contrast intends; that changes results, so it is opt-in (`randaug(..., true_mean_contrast=True)`).
    """
    if not true_mean:
        level = tf.minimum(tf.size(image[:, :, 0]) // 256, 255)
    else:
        gray = tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)
        hist = tf.math.bincount(tf.reshape(gray, [-1]), minlength=256, maxlength=256, dtype=tf.float32)
        level = tf.clip_by_value(tf.reduce_sum(hist * tf.range(256, dtype=tf.float32)) / tf.cast(tf.size(gray), tf.float32), 0.0, 255.0)
    flat = tf.fill(tf.shape(image), tf.cast(level, tf.uint8))
    return blend(flat, image, factor)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blend from black to the image."""
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """Blend from PIL's SMOOTH-filtered image (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, truncated; the 1-pixel border stays as is) to the image."""
    n_channels = image.shape[-1]
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], tf.float32)[:, :, None, None] / 13.0
    kernel = tf.tile(kernel, [1, 1, n_channels, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
    border = [[1, 1], [1, 1], [0, 0]]
    inside = tf.pad(tf.ones_like(smooth, tf.bool), border, constant_values=False)
    degenerate = tf.where(inside, tf.pad(smooth, border), image)
    return blend(degenerate, image, factor)


def _transform(image: tf.Tensor, transform: list) -> tf.Tensor:
    """Projective warp: output pixel (x, y) takes the input pixel nearest to ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
    k = c0 x + c1 y + 1; outside pixels get FILL_VALUE.
    """
    transforms = tf.reshape(tf.cast(tf.stack(transform), tf.float32), [1, 8])  # a batch of one image, one transform
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transforms,
        output_shape=tf.shape(image)[:2],
        fill_value=tf.constant(FILL_VALUE, tf.float32),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0]
    out.set_shape(image.shape)
    return out


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
    """Rotate about the image centre, counter-clockwise on screen for positive `degrees` (90 degrees equals np.rot90 on square images)."""
    theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    h1, w1 = hw[0] - 1.0, hw[1] - 1.0
    # Input point = R(theta) (output point - centre) + centre. The offsets are computed in this float32 order, tensorflow_addons' (which
    # big_vision's rotate calls): with the centre on a half pixel, nearest sampling sits on .5 ties, and another order of the same sum rounds
    # some of them the other way (up to 11% of the pixels of a 300x451 image at 90 degrees).
    x_offset = (w1 - (cos * w1 - sin * h1)) / 2.0
    y_offset = (h1 - (sin * w1 + cos * h1)) / 2.0
    return _transform(image, [cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])


def shear_x(image: tf.Tensor, level) -> tf.Tensor:
    """Output (x, y) reads input (x + level * y, y)."""
    level = tf.cast(level, tf.float32)
    return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level) -> tf.Tensor:
    """Output (x, y) reads input (x, level * x + y)."""
    level = tf.cast(level, tf.float32)
    return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
    """Output (x, y) reads input (x + pixels, y): positive `pixels` moves the content left."""
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
    """Output (x, y) reads input (x, y + pixels): positive `pixels` moves the content up."""
    pixels = tf.cast(pixels, tf.float32)
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0])


def cutout(image: tf.Tensor, pad_size: int, center: tuple | None = None) -> tf.Tensor:
    """Fill rows [cy - pad, cy + pad) x columns [cx - pad, cx + pad) (clipped to the image) with FILL_VALUE; the centre is uniform over the
    image unless given.
    """
    size = tf.shape(image)
    if center is None:
        center = (utils.uniform([], 0, size[0], dtype=tf.int32), utils.uniform([], 0, size[1], dtype=tf.int32))
    cy, cx = center
    rows, cols = tf.range(size[0])[:, None], tf.range(size[1])[None, :]
    inside = (rows >= cy - pad_size) & (rows < cy + pad_size) & (cols >= cx - pad_size) & (cols < cx + pad_size)
    return tf.where(inside[:, :, None], tf.constant(FILL_VALUE, image.dtype), image)


def get_level_args(magnitude: float) -> dict[str, float | int | None]:
    """The argument of each op for magnitude M (before the random sign of the SIGNED_OPS); None for ops without one."""
    level = float(magnitude) / 10.0
    enhance = level * 1.8 + 0.1
    return {
        "AutoContrast": None,
        "Equalize": None,
        "Invert": None,
        "Rotate": level * 30.0,
        "Posterize": int(level * 4),
        # big_vision compares a uint8 image with int(256 L), which TF wraps mod 256: M=10 gives 0 (every pixel inverted), not 256 (no-op). Kept for parity.
        "Solarize": int(level * 256) % 256,
        "Color": enhance,
        "Contrast": enhance,
        "Brightness": enhance,
        "Sharpness": enhance,
        "ShearX": level * 0.3,
        "ShearY": level * 0.3,
        "TranslateX": level * 100.0,
        "TranslateY": level * 100.0,
        "Cutout": int(level * 40),
        "SolarizeAdd": int(level * 110),
    }


OP_FNS: dict[str, Callable] = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}


def _random_sign(x: float) -> tf.Tensor:
    x = tf.constant(x, tf.float32)
    return tf.where(utils.uniform([], 0.0, 1.0, dtype=tf.float32) < 0.5, x, -x)


def _bind(name: str, arg) -> Callable[[tf.Tensor], tf.Tensor]:
    fn = OP_FNS[name]
    if arg is None:
        return fn
    if name in SIGNED_OPS:
        return lambda image: fn(image, _random_sign(arg))
    return lambda image: fn(image, arg)


def make_layer_ops(magnitude: float, true_mean_contrast: bool = False) -> list[Callable[[tf.Tensor], tf.Tensor]]:
    """The 16 ops of one layer, in OP_NAMES order, with their magnitude bound (signed ops draw their sign per call)."""
    args = get_level_args(magnitude)
    ops = [_bind(name, args[name]) for name in OP_NAMES]
    if true_mean_contrast:
        ops[OP_NAMES.index("Contrast")] = lambda image: contrast(image, args["Contrast"], true_mean=True)
    return ops


@registry.register("randaug")
@utils.in_key_out_key()
def get_randaug(num_layers: int = 2, magnitude: float = 10, true_mean_contrast: bool = False):
    """RandAugment on a uint8 [h, w, 3] image: `num_layers` times, one of the 16 ops chosen uniformly, always applied.

    `true_mean_contrast=True` makes Contrast blend toward the image's mean gray level rather than big_vision's size-dependent gray (see `contrast`).
    """
    if not (isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 0):
        raise ValueError(f"pp op randaug: num_layers must be a non-negative int, got {num_layers!r}")
    if not (isinstance(magnitude, int | float) and not isinstance(magnitude, bool) and magnitude >= 0):
        raise ValueError(f"pp op randaug: magnitude must be a non-negative number, got {magnitude!r}")
    if not isinstance(true_mean_contrast, bool):
        raise ValueError(f"pp op randaug: true_mean_contrast must be True or False, got {true_mean_contrast!r}")
    ops = make_layer_ops(magnitude, true_mean_contrast)

    def _randaug(image):
        if image.dtype != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3:
            raise ValueError(f"pp op randaug: needs a uint8 [h, w, 3] image (apply it before value_range), got {image.dtype.name} {image.shape}")
        for _ in range(num_layers):
            choice = utils.uniform([], 0, len(ops), dtype=tf.int32)
            image = tf.switch_case(choice, [functools.partial(op, image) for op in ops])
        return image

    return _randaug
