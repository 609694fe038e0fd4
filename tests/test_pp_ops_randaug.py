"""Numbers of the randaug primitives and of the randaug pp op, each run eagerly and inside tf.data.Dataset.map.

The randaug primitives are called directly with fixed arguments; the randaug op is built from pp strings through the builder, as a config
would use it. References are plain numpy (or PIL, where PIL defines the op) and hand-computed values.
"""

import numpy as np
import pytest
from PIL import Image, ImageOps

from big_vision.pp import randaug
from tests.pp_helpers import MODES, coord_image, image_fn, load_photo, run, run_n
from utils.tf_import import tf


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 64x64 RGB photo with a full tonal range."""
    return load_photo()


# ---------------------------------------------------------------- randaug primitives


def apply_op(fn, image: np.ndarray, mode: str, *args) -> np.ndarray:
    return run(image_fn(lambda t: fn(t, *args)), {"image": image}, mode)["image"]


def np_blend(a: np.ndarray, b: np.ndarray, factor: float) -> np.ndarray:
    mixed = a.astype(np.float32) + np.float32(factor) * (b.astype(np.float32) - a.astype(np.float32))
    return (mixed if 0 < factor < 1 else np.clip(mixed, 0, 255)).astype(np.uint8)


def tf_gray(image: np.ndarray) -> np.ndarray:
    """TF's grayscale (the degenerate image of Color and Contrast), as a [h, w] uint8 array."""
    return tf.image.rgb_to_grayscale(image).numpy()[:, :, 0]


def test_blend_truncates_inside_and_clips_outside(mode):
    a, b = np.array([[[10, 200, 0]]], np.uint8), np.array([[[13, 100, 255]]], np.uint8)
    both = lambda f: run(lambda d: {"x": randaug.blend(d["a"], d["b"], f)}, {"a": a, "b": b}, mode)["x"]  # noqa: E731
    np.testing.assert_array_equal(both(0.0), a)
    np.testing.assert_array_equal(both(1.0), b)
    np.testing.assert_array_equal(both(0.5), [[[11, 150, 127]]])  # 11.5 -> 11, 127.5 -> 127
    np.testing.assert_array_equal(both(2.0), [[[16, 0, 255]]])  # 16, -100 -> 0, 510 -> 255


def test_autocontrast(mode, photo):
    x = photo // 2 + 40
    x[:, :, 2] = 77  # a flat channel stays as it is
    xf = x.astype(np.float32)
    lo, hi = xf.min(axis=(0, 1)), xf.max(axis=(0, 1))
    scale = np.float32(255) / np.maximum(hi - lo, 1)
    expected = np.where(hi > lo, np.clip(xf * scale - lo * scale, 0, 255).astype(np.uint8), x)
    out = apply_op(randaug.autocontrast, x, mode)
    np.testing.assert_array_equal(out, expected)
    assert out[:, :, 0].min() == 0 and out[:, :, 0].max() >= 254


def test_equalize_matches_pil(mode, photo):
    x = photo.copy()
    x[:, :, 2] = 9  # a flat channel: PIL's step is 0 and the channel is kept
    np.testing.assert_array_equal(apply_op(randaug.equalize, x, mode), np.asarray(ImageOps.equalize(Image.fromarray(x))))


def test_invert(mode, photo):
    np.testing.assert_array_equal(apply_op(randaug.invert, photo, mode), 255 - photo)


@pytest.mark.parametrize("bits", [0, 1, 2, 4, 8, 9, 12])
def test_posterize(mode, photo, bits):
    # bits=0: the shift 8 is clamped to 7; bits >= 9: the negative shift wraps in uint8 and is clamped to 7 (big_vision's M >= 22.5)
    expected = photo & 0x80 if bits in (0, 9, 12) else np.asarray(ImageOps.posterize(Image.fromarray(photo), bits))
    np.testing.assert_array_equal(apply_op(randaug.posterize, photo, mode, bits), expected)


@pytest.mark.parametrize("threshold", [0, 100, 128, 256])
def test_solarize_matches_pil(mode, photo, threshold):
    expected = np.asarray(ImageOps.solarize(Image.fromarray(photo), threshold))
    np.testing.assert_array_equal(apply_op(randaug.solarize, photo, mode, threshold), expected)


def test_solarize_add(mode, photo):
    expected = np.where(photo < 128, np.minimum(photo.astype(int) + 110, 255), photo).astype(np.uint8)
    np.testing.assert_array_equal(apply_op(randaug.solarize_add, photo, mode, 110), expected)


@pytest.mark.parametrize("factor", [0.1, 0.64, 1.9])
def test_color_contrast_brightness(mode, photo, factor):
    gray = tf_gray(photo)
    np.testing.assert_array_equal(apply_op(randaug.color, photo, mode, factor), np_blend(np.repeat(gray[:, :, None], 3, axis=2), photo, factor))
    flat = np.full_like(photo, 64 * 64 // 256)  # big_vision's gray level: the pixel count / 256, whatever the content
    np.testing.assert_array_equal(apply_op(randaug.contrast, photo, mode, factor), np_blend(flat, photo, factor))
    mean_flat = np.full_like(photo, np.uint8(np.trunc(gray.astype(np.float64).mean())))
    np.testing.assert_array_equal(apply_op(lambda t, f: randaug.contrast(t, f, true_mean=True), photo, mode, factor), np_blend(mean_flat, photo, factor))
    np.testing.assert_array_equal(apply_op(randaug.brightness, photo, mode, factor), np_blend(np.zeros_like(photo), photo, factor))


def test_color_keeps_gray_images(mode, photo):
    gray = np.repeat(photo[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(apply_op(randaug.color, gray, mode, 1.9), gray)


@pytest.mark.parametrize("factor", [0.1, 1.9])
def test_sharpness(mode, photo, factor):
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    x = photo.astype(np.float32)
    h, w = photo.shape[:2]
    smooth = photo.copy()
    acc = sum(kernel[i, j] * x[i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3))
    smooth[1:-1, 1:-1] = np.clip(acc, 0, 255).astype(np.uint8)
    out = apply_op(randaug.sharpness, photo, mode, factor)
    # The float32 sums of numpy and TF's depthwise conv may order terms differently: allow a rare 1-level difference.
    diff = np.abs(out.astype(int) - np_blend(smooth, photo, factor))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    np.testing.assert_array_equal(out[0], np_blend(photo[0], photo[0], factor))  # the border is not smoothed


@pytest.mark.parametrize(("degrees", "k"), [(90.0, 1), (-90.0, -1), (180.0, 2), (0.0, 0)])
def test_rotate_square_quarter_turns(mode, photo, degrees, k):
    np.testing.assert_array_equal(apply_op(randaug.rotate, photo, mode, degrees), np.rot90(photo, k))


def test_rotate_fills_outside_with_128(mode):
    x = np.full((6, 10, 3), 7, np.uint8)
    out = apply_op(randaug.rotate, x, mode, 90.0)
    np.testing.assert_array_equal(out[:, 2:8], 7)  # the centre 6x6 square stays inside the image
    np.testing.assert_array_equal(out[:, :2], 128)
    np.testing.assert_array_equal(apply_op(randaug.rotate, coord_image(6, 10), mode, 180.0), np.rot90(coord_image(6, 10), 2))


def np_warp(image: np.ndarray, src_fn) -> np.ndarray:
    """out[y, x] = image[src_fn(y, x)] for integer source points, FILL_VALUE outside."""
    h, w = image.shape[:2]
    out = np.full_like(image, randaug.FILL_VALUE)
    for y in range(h):
        for x in range(w):
            sy, sx = src_fn(y, x)
            if 0 <= sy < h and 0 <= sx < w:
                out[y, x] = image[sy, sx]
    return out


@pytest.mark.parametrize("level", [1.0, -1.0, 0.0])
def test_shear(mode, level):
    x = coord_image(8, 12)
    lv = int(level)
    np.testing.assert_array_equal(apply_op(randaug.shear_x, x, mode, level), np_warp(x, lambda y, c: (y, c + lv * y)))
    np.testing.assert_array_equal(apply_op(randaug.shear_y, x, mode, level), np_warp(x, lambda y, c: (y + lv * c, c)))


@pytest.mark.parametrize("pixels", [3.0, -5.0, 40.0])
def test_translate(mode, pixels):
    x = coord_image(8, 12)
    p = int(pixels)
    np.testing.assert_array_equal(apply_op(randaug.translate_x, x, mode, pixels), np_warp(x, lambda y, c: (y, c + p)))
    np.testing.assert_array_equal(apply_op(randaug.translate_y, x, mode, pixels), np_warp(x, lambda y, c: (y + p, c)))


@pytest.mark.parametrize(("pad", "center"), [(2, (4, 5)), (3, (0, 11)), (0, (4, 4))])
def test_cutout_at_center(mode, pad, center):
    x = coord_image(8, 12)
    expected = x.copy()
    expected[max(center[0] - pad, 0) : center[0] + pad, max(center[1] - pad, 0) : center[1] + pad] = 128
    np.testing.assert_array_equal(apply_op(lambda t: randaug.cutout(t, pad, center), x, mode), expected)


def cutout_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int] | None:
    """(h, w) of the changed region if `after` is `before` with one axis-aligned box set to 128, else None; (0, 0) if nothing changed."""
    changed = np.any(after != before, axis=-1)
    if not changed.any():
        return 0, 0
    ys, xs = np.nonzero(changed)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    rest = after.copy()
    rest[box] = before[box]
    if not (np.all(after[box] == 128) and np.array_equal(rest, before)):
        return None
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_cutout_random_center(mode):
    x = coord_image(20, 20) // 2  # no pixel is 128, so every changed pixel shows
    for o in run_n(image_fn(lambda t: randaug.cutout(t, 4)), {"image": x}, mode, n=10):
        box = cutout_box(x, o["image"])
        assert box is not None and box[0] <= 8 and box[1] <= 8


# ---------------------------------------------------------------- randaug op


def test_level_args_follow_big_vision():
    assert randaug.get_level_args(10) == pytest.approx(
        {
            "AutoContrast": None,
            "Equalize": None,
            "Invert": None,
            "Rotate": 30.0,
            "Posterize": 4,
            "Solarize": 0,  # 256 wraps to 0 as in big_vision: every pixel is inverted
            "Color": 1.9,
            "Contrast": 1.9,
            "Brightness": 1.9,
            "Sharpness": 1.9,
            "ShearX": 0.3,
            "ShearY": 0.3,
            "TranslateX": 100.0,
            "TranslateY": 100.0,
            "Cutout": 40,
            "SolarizeAdd": 110,
        }
    )
    args15, args2 = randaug.get_level_args(15), randaug.get_level_args(2)
    assert (args15["Solarize"], args15["Posterize"], args15["Cutout"], randaug.get_level_args(20)["Solarize"]) == (128, 6, 60, 0)
    assert (args2["Posterize"], args2["Solarize"], args2["SolarizeAdd"]) == (0, 51, 22)
    assert randaug.get_level_args(0)["Color"] == pytest.approx(0.1)


def test_randaug_one_layer_applies_exactly_one_listed_op(mode, photo):
    x = np.ascontiguousarray(photo[::2, ::2])  # 32x32
    magnitude = 3
    args = randaug.get_level_args(magnitude)
    candidates = []
    for name in randaug.OP_NAMES:
        if name == "Cutout":
            continue
        fn, arg = randaug.OP_FNS[name], args[name]
        signs = (1, -1) if name in randaug.SIGNED_OPS else (1,)
        for s in signs:
            candidates.append((name, (fn(tf.constant(x)) if arg is None else fn(tf.constant(x), s * arg)).numpy()))
    seen = set()
    for o in run_n(f"randaug(1, {magnitude})", {"image": x}, mode, n=48):
        names = {name for name, c in candidates if np.array_equal(o["image"], c)}
        box = cutout_box(x, o["image"])
        if box is not None and box != (0, 0) and max(box) <= 2 * args["Cutout"]:
            names.add("Cutout")
        assert names, "randaug(1, 3) gave an image that no single op explains"
        seen |= names
    assert len(seen) >= 8, f"only {sorted(seen)} were drawn in 48 samples"


def test_randaug_zero_layers_is_identity_and_shape_is_kept(mode, photo):
    np.testing.assert_array_equal(run("randaug(0, 10)", {"image": photo}, mode)["image"], photo)
    for o in run_n("randaug(2, 15)", {"image": photo}, mode, n=4):
        assert o["image"].shape == photo.shape and o["image"].dtype == np.uint8


def test_randaug_needs_uint8_rgb(mode, photo):
    with pytest.raises(ValueError, match="uint8"):
        run("value_range(0, 1)|randaug", {"image": photo}, mode)
