"""Numbers of the image pp ops, each run eagerly and inside tf.data.Dataset.map.

Ops are built from pp strings through the builder, as a config would use them. References are plain numpy (or PIL, where PIL defines the
op) and hand-computed values.
"""

import io

import numpy as np
import pytest
from PIL import Image

from tests.pp_helpers import MODES, coord_image, find_window, load_photo, run, run_n
from utils.tf_import import tf


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 64x64 RGB photo with a full tonal range."""
    return load_photo()


# ---------------------------------------------------------------- image ops


def test_decode_png_is_lossless_and_gray_gives_three_channels(mode, photo):
    png = tf.io.encode_png(photo).numpy()
    assert np.array_equal(run("decode", {"image": png}, mode)["image"], photo)
    gray = photo[:, :, :1]
    out = run("decode", {"image": tf.io.encode_png(gray).numpy()}, mode)["image"]
    assert out.shape == (64, 64, 3) and all(np.array_equal(out[:, :, c], gray[:, :, 0]) for c in range(3))
    assert run("decode(channels=1)", {"image": png}, mode)["image"].shape == (64, 64, 1)


def test_decode_precise_matches_pil(mode, photo):
    jpeg = tf.io.encode_jpeg(photo, quality=90).numpy()
    pil = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    precise = run("decode(precise=True)", {"image": jpeg}, mode)["image"]
    fast = run("decode", {"image": jpeg}, mode)["image"]
    assert np.array_equal(precise, pil)
    assert np.abs(fast.astype(int) - pil).max() <= 10 and fast.dtype == np.uint8


def test_resize_bilinear_halving_averages_blocks_and_truncates(mode):
    x = np.array([[0, 1, 10, 20], [2, 4, 30, 41], [255, 255, 0, 0], [255, 254, 0, 1]], np.uint8)[:, :, None]
    blocks = x.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(2, 2, 4).astype(np.float64).mean(-1)
    out = run("resize(2)", {"image": x}, mode)["image"]
    assert out.dtype == np.uint8 and np.array_equal(out[:, :, 0], np.trunc(blocks).astype(np.uint8))  # 1.75 -> 1, 25.25 -> 25, 254.75 -> 254
    out_f = run("resize(2)", {"image": x.astype(np.float32)}, mode)["image"]
    assert out_f.dtype == np.float32 and np.allclose(out_f[:, :, 0], blocks)
    assert run("resize((1, 3))", {"image": x}, mode)["image"].shape == (1, 3, 1)


@pytest.mark.parametrize(
    ("hw", "pp", "expected_hw"),
    [
        ((4, 5), "resize_small(2)", (2, 2)),
        ((4, 7), "resize_small(2)", (2, 4)),
        ((8, 5), "resize_long(4)", (4, 2)),
        ((640, 481), "resize_long(320)", (320, 240)),
    ],
)
def test_resize_keep_aspect_rounds_half_to_even(mode, hw, pp, expected_hw):
    out = run(pp, {"image": np.zeros((*hw, 3), np.uint8)}, mode)["image"]
    assert out.shape == (*expected_hw, 3)  # 2.5 -> 2, 3.5 -> 4, 240.5 -> 240


@pytest.mark.parametrize("pp", ["resize_small(4)", "resize_long(6)"])
def test_resize_small_long_area_averages(mode, pp):
    x = (np.arange(8 * 12 * 3) * 37 % 256).astype(np.uint8).reshape(8, 12, 3)
    out = run(pp, {"image": x}, mode)["image"]
    blocks = x.reshape(4, 2, 6, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.dtype == np.uint8 and np.array_equal(out, np.trunc(blocks).astype(np.uint8))


def test_inception_crop_takes_a_window_of_the_right_area(mode):
    x = coord_image(40, 40)
    outs = [o["image"] for o in run_n("inception_crop(area_min=50)", {"image": x}, mode, n=12)]
    for crop in outs:
        y0, x0 = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        h, w = crop.shape[:2]
        assert np.array_equal(crop, x[y0 : y0 + h, x0 : x0 + w])
        assert 0.5 - 0.05 <= h * w / 40**2 <= 1.0
        assert 0.75 - 0.1 <= w / h <= 1.33 + 0.1
    assert len({(o.shape, o[0, 0, 0], o[0, 0, 1]) for o in outs}) > 1


def test_inception_crop_full_area_then_resize(mode, photo):
    out = run("inception_crop(32, area_min=100)", {"image": photo}, mode)["image"]
    expected = run("resize(32)", {"image": photo}, mode)["image"]
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_decode_jpeg_and_inception_crop_decodes_a_window(mode, photo):
    # Without chroma subsampling a partial decode equals the same window of a full decode, pixel for pixel.
    jpeg = tf.io.encode_jpeg(photo, quality=95, chroma_downsampling=False).numpy()
    full = tf.io.decode_jpeg(jpeg).numpy()
    outs = [o["image"] for o in run_n("decode_jpeg_and_inception_crop(area_min=30)", {"image": jpeg}, mode, n=6)]
    for crop in outs:
        assert crop.dtype == np.uint8 and 0.3 - 0.05 <= crop.shape[0] * crop.shape[1] / 64**2 <= 1.0
        assert find_window(full, crop), f"crop of shape {crop.shape} is no window of the decoded image"
    assert len({o.shape for o in outs}) > 1


def test_decode_jpeg_and_inception_crop_full_area_then_resize(mode, photo):
    jpeg = tf.io.encode_jpeg(photo).numpy()
    out = run("decode_jpeg_and_inception_crop(24, area_min=100, ratio_min=1.0, ratio_max=1.0)", {"image": jpeg}, mode)["image"]
    assert np.array_equal(out, run("decode|resize(24)", {"image": jpeg}, mode)["image"])


def test_decode_jpeg_and_inception_crop_rejects_png(mode, photo):
    with pytest.raises(tf.errors.InvalidArgumentError):
        run("decode_jpeg_and_inception_crop(24)", {"image": tf.io.encode_png(photo).numpy()}, mode)


def test_random_crop_takes_windows_at_random_places(mode):
    x = coord_image(10, 12)
    outs = [o["image"] for o in run_n("random_crop((4, 5))", {"image": x}, mode, n=16)]
    for crop in outs:
        y0, x0 = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        assert crop.shape == (4, 5, 3) and np.array_equal(crop, x[y0 : y0 + 4, x0 : x0 + 5])
    assert len({(o[0, 0, 0], o[0, 0, 1]) for o in outs}) > 1
    with pytest.raises(tf.errors.InvalidArgumentError):
        run("random_crop(11)", {"image": x}, mode)


def test_central_crop_offsets_round_down(mode):
    x = coord_image(7, 10)
    assert np.array_equal(run("central_crop((3, 4))", {"image": x}, mode)["image"], x[2:5, 3:7])
    assert np.array_equal(run("central_crop(4)", {"image": x}, mode)["image"], x[1:5, 3:7])
    assert np.array_equal(run("central_crop", {"image": x}, mode)["image"], x[:, 1:8])  # largest centred square
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        run("central_crop(8)", {"image": x}, mode)


def test_flip_lr_mirrors_about_half_the_time(mode):
    x = coord_image(3, 5)
    outs = [o["image"] for o in run_n("flip_lr", {"image": x}, mode, n=40)]
    n_flipped = sum(np.array_equal(o, x[:, ::-1]) for o in outs)
    assert all(np.array_equal(o, x) or np.array_equal(o, x[:, ::-1]) for o in outs)
    assert 0 < n_flipped < 40


def test_vgg_and_clip_value_range(mode, photo):
    x = photo.astype(np.float32)
    vgg = (x - np.array([0.485, 0.456, 0.406], np.float32) * 255) / (np.array([0.229, 0.224, 0.225], np.float32) * 255)
    clip = (x - np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255) / (np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255)
    np.testing.assert_allclose(run("vgg_value_range", {"image": photo}, mode)["image"], vgg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run("clip_value_range", {"image": photo}, mode)["image"], clip, rtol=1e-5, atol=1e-5)
    custom = run("vgg_value_range((10, 20, 30), (2, 4, 5))", {"image": photo}, mode)["image"]
    np.testing.assert_allclose(custom, (x - [10, 20, 30]) / [2, 4, 5], rtol=1e-6)
