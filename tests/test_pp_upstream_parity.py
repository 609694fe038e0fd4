"""Our pp ops against google-research/big_vision's on fixed inputs: every expected value here is an output of upstream's code, stored as a literal.

How the literals were produced: big_vision at commit 0127fb6 (big_vision/pp/autoaugment.py for the randaug ops, big_vision/pp/ops_general.py),
run eagerly on TF 2.21 CPU on the inputs built below. autoaugment.py needs tensorflow_addons, which has no build for TF 2.21: its
image.transform/rotate/translate were re-expressed on tf.raw_ops.ImageProjectiveTransformV3 as tensorflow_addons 0.23 calls it (same argument
arithmetic). A randaug op gets upstream's level argument for magnitude M (`randaug.get_level_args`), with the sign fixed for the signed ops;
Cutout is left out (its centre is random). Image outputs are stored as the first 16 hex digits of the sha256 of their bytes (`digest`).
Upstream cases that we refuse on purpose are listed with the reason.
"""

import hashlib

import numpy as np
import pytest
import skimage.data

from big_vision.pp import builder, randaug
from tests.pp_helpers import MODES, image_fn, load_photo, run
from utils.tf_import import tf


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def make_image(name: str) -> np.ndarray:
    """The uint8 test images: a 64x64 and a 224x224 photo, a 300x451 photo (its centre is on a half pixel) and a 37x53 pattern."""
    if name == "p64":
        return load_photo()
    if name == "a224":
        return np.ascontiguousarray(skimage.data.astronaut()[::2, ::2][16:240, 16:240])
    if name == "c300x451":
        return np.ascontiguousarray(skimage.data.coffee()[50:350, 70:521])
    assert name == "g37x53", name
    rows, cols = np.meshgrid(np.arange(37), np.arange(53), indexing="ij")
    return np.stack([rows * 7 % 256, cols * 5 % 256, (rows * cols) % 256], -1).astype(np.uint8)


def apply_randaug_op(name: str, image: np.ndarray, magnitude: float, sign: int, mode: str) -> np.ndarray:
    arg = randaug.get_level_args(magnitude)[name]
    fn = randaug.OP_FNS[name]
    op = (lambda t: fn(t)) if arg is None else (lambda t: fn(t, sign * arg))
    return run(image_fn(op), {"image": image}, mode)["image"]


# ---------------------------------------------------------------- randaug ops

# Op (with the sign of the signed ops) -> digests of upstream's output on the 224x224 photo at M = 3, 12, 25.
TABLE_MAGNITUDES = (3, 12, 25)
TABLE = {
    "AutoContrast": ("baeec0f48aa40396", "baeec0f48aa40396", "baeec0f48aa40396"),
    "Equalize": ("d465298122b95b2f", "d465298122b95b2f", "d465298122b95b2f"),
    "Invert": ("48f37a6a4fe2bb42", "48f37a6a4fe2bb42", "48f37a6a4fe2bb42"),
    "Rotate+": ("422ab7ca5491b70b", "32be43923deeab31", "f98963e225a4ec61"),
    "Rotate-": ("8c097f1a1685556f", "3aa22eba59a15514", "f6b49131a0a5992b"),
    "Posterize": ("706bd41c027fd61a", "6d36b566a043fad8", "706bd41c027fd61a"),
    "Solarize": ("7c0c91843e5cc4f4", "29d48d9f567df944", "16a35cd7e1a833fc"),
    "Color": ("4d78bf47d4602de1", "ee77ff3f2faaaf78", "d52c579133be8913"),
    "Contrast": ("a87ea3abd29858cf", "2a667b6afa158e02", "30e1b65e320ac75e"),
    "Brightness": ("7cea2288891aae4d", "10d97f78d5964ce9", "51a5a3c945d76526"),
    "Sharpness": ("96059159f09e3370", "b0bdcda947ebd4dd", "fe3eba06d7126967"),
    "ShearX+": ("d03ea739df64f425", "9f0ecf5cca0a549d", "8d63fb010c136b7c"),
    "ShearX-": ("88e5ccd7bb41fc9d", "4709a88b3e36776a", "9ad31acb9c99cb2d"),
    "ShearY+": ("22dafc350cff728e", "7872936551d795bd", "966a17549eae10a6"),
    "ShearY-": ("96106f335680fb6f", "4c61ce1a986354a7", "bd93d8bc0e42c02d"),
    "TranslateX+": ("d20b401cd5ca29a2", "aa3eee30b7461373", "4517d4effbf0eb3f"),
    "TranslateX-": ("5fb33576b50199bd", "25182d45b407f256", "4517d4effbf0eb3f"),
    "TranslateY+": ("63995fd81565d4ff", "ae17f927d15a794a", "4517d4effbf0eb3f"),
    "TranslateY-": ("b6df2abef4cfd8da", "dd7c3e3d01aa5e5d", "4517d4effbf0eb3f"),
    "SolarizeAdd": ("4b9be2b2d8081fea", "dc1cca07b8bd5b65", "9d471acebdc28be8"),
}


@pytest.mark.parametrize("key", sorted(TABLE))
def test_randaug_ops_match_upstream(mode, key):
    name, sign = key.rstrip("+-"), -1 if key.endswith("-") else 1
    x = make_image("a224")
    got = [digest(apply_randaug_op(name, x, m, sign, mode)) for m in TABLE_MAGNITUDES]
    if name == "Sharpness" and got != list(TABLE[key]):
        check_sharpness_ties_only(x, mode)  # oneDNN's convolution order on this CPU: ties of the truncation may fall either way
        return
    assert got == list(TABLE[key])


def check_sharpness_ties_only(x: np.ndarray, mode: str) -> None:
    """Upstream truncates conv(image, [[1,1,1],[1,5,1],[1,1,1]] / 13) to uint8 in float32, so where the exact sum is a multiple of 13 the
    float result may land just below the integer, by the CPU's summation order (oneDNN differs between CPU kinds). Outside those ties our
    output equals exact integer arithmetic; at a tie it is either truncation."""
    xi = x.astype(np.int64)
    total = sum(xi[1 + dy : xi.shape[0] - 1 + dy, 1 + dx : xi.shape[1] - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) + 4 * xi[1:-1, 1:-1]
    exact, tie = xi.copy(), np.zeros(x.shape, bool)
    exact[1:-1, 1:-1], tie[1:-1, 1:-1] = total // 13, total % 13 == 0
    assert tie.any()  # the photo has ties: the check below is not vacuous
    for magnitude in TABLE_MAGNITUDES:
        factor = randaug.get_level_args(magnitude)["Sharpness"]
        ours = apply_randaug_op("Sharpness", x, magnitude, 1, mode).astype(np.int64)
        floor_, below = (blend_smooth(x, smooth, factor, mode) for smooth in (exact, exact - tie))
        assert np.array_equal(ours[~tie], floor_[~tie]), magnitude
        assert np.all((ours == floor_) | (ours == below)), magnitude


def blend_smooth(x: np.ndarray, smooth: np.ndarray, factor: float, mode: str) -> np.ndarray:
    return run(image_fn(lambda t: randaug.blend(tf.constant(smooth.astype(np.uint8)), t, factor)), {"image": x}, mode)["image"].astype(np.int64)


# Image -> (upstream's flat gray level, digests of upstream's Contrast at M = 0, 3, 9, 30, i.e. factors 0.1, 0.64, 1.72, 5.5).
# The gray level is min(h w // 256, 255), not the image's mean gray (which is 105 for p64): upstream divides the histogram's sum by 256.
CONTRAST = {
    "p64": (16, ("aab3e5ed8d470a8e", "c45569b7e8758666", "d35c95847dd4efcf", "b342c06f81e93d6a")),
    "a224": (196, ("25ef2cb3941e4c3b", "a87ea3abd29858cf", "7aaa1bb61cd5ab9e", "a599e2569f852b3e")),
    "c300x451": (255, ("7a83eabe6b2cb293", "d1fab305be07567f", "2edfba768876d6c5", "ebcbb7fc137bf636")),
    "g37x53": (7, ("045893a02322ca66", "ea6c54f5a7510d0c", "d41fb01b2204bcbd", "b8203c385460d9cb")),
}


@pytest.mark.parametrize("image_name", sorted(CONTRAST))
def test_contrast_matches_upstream(mode, image_name):
    x = make_image(image_name)
    level, digests = CONTRAST[image_name]
    assert [digest(apply_randaug_op("Contrast", x, m, 1, mode)) for m in (0, 3, 9, 30)] == list(digests)
    flat = np.full(x.shape, level, np.float32)
    expected = (flat + np.float32(0.1) * (x.astype(np.float32) - flat)).astype(np.uint8)  # upstream's blend at factor 0.1
    np.testing.assert_array_equal(apply_randaug_op("Contrast", x, 0, 1, mode), expected)


def test_contrast_true_mean_is_opt_in(mode):
    x = make_image("p64")
    out = run(image_fn(lambda t: randaug.contrast(t, 0.1, true_mean=True)), {"image": x}, mode)["image"]
    gray = tf.image.rgb_to_grayscale(x).numpy()
    flat = np.full(x.shape, np.trunc(gray.astype(np.float64).mean()), np.float32)
    np.testing.assert_array_equal(out, (flat + np.float32(0.1) * (x.astype(np.float32) - flat)).astype(np.uint8))
    assert run("randaug(0, 10, true_mean_contrast=True)", {"image": x}, mode)["image"].shape == x.shape
    with pytest.raises(ValueError, match="true_mean_contrast must be True or False"):
        builder.get_preprocess_fn("randaug(2, 10, true_mean_contrast=1)")


@pytest.mark.parametrize("magnitude", [22.5, 25, 30])
def test_posterize_at_high_magnitude_matches_upstream(mode, magnitude):
    """Upstream's shift 8 - bits is negative from M = 22.5 on; TF wraps it to uint8 and clamps it to 7, which keeps the top bit."""
    assert randaug.get_level_args(magnitude)["Posterize"] >= 9
    for image_name, expected in (("p64", "28c3424176fb99ff"), ("a224", "706bd41c027fd61a")):
        x = make_image(image_name)
        out = apply_randaug_op("Posterize", x, magnitude, 1, mode)
        assert digest(out) == expected
        np.testing.assert_array_equal(out, x & 0x80)


# (image, degrees) -> digest of upstream's Rotate. Before the offsets were computed in tensorflow_addons' float32 order, 90 degrees on the
# 300x451 image differed on 11% of its pixels (its centre x 225 and y 149.5 put the sampled points on .5 ties) and the others on a few pixels.
ROTATE = {
    ("c300x451", 90.0): "fbe37900b3f3f9fa",
    ("c300x451", -90.0): "ef0dbdf7a3b00866",
    ("c300x451", -3.0): "2fe1f8f8d3f73a13",
    ("c300x451", -9.0): "49c80cd08d278017",
    ("a224", 67.5): "74e3e7235d75ea3c",
    ("a224", -67.5): "20897e79731aff1a",
    ("g37x53", 90.0): "8180f247287471f6",
}


@pytest.mark.parametrize(("image_name", "degrees"), sorted(ROTATE))
def test_rotate_matches_upstream(mode, image_name, degrees):
    out = run(image_fn(lambda t: randaug.rotate(t, degrees)), {"image": make_image(image_name)}, mode)["image"]
    assert digest(out) == ROTATE[image_name, degrees]


# ---------------------------------------------------------------- general ops

U8 = np.array([[[0, 51, 255]]], np.uint8)
F32 = np.array([-10.0, 0.0, 100.0, 255.0, 300.0], np.float32)
I64_NONE = {"eos": tf.TensorSpec([None], tf.int64)}

# (pp string, input example, tf.data signature or None, output key, upstream's output dtype, upstream's output values).
GENERAL = [
    ("value_range(1, -1)", {"image": U8}, None, "image", "float32", [[[1.0, 0.6000000238418579, -1.0]]]),
    ("value_range(0, 1, 0, 255, True)", {"image": F32}, None, "image", "float32", [0.0, 0.0, 0.3921568691730499, 1.0, 1.0]),
    ("value_range(-1, 1, 0, 255, True)", {"image": F32}, None, "image", "float32", [-1.0, -1.0, -0.21568626165390015, 1.0, 1.0]),
    ("value_range(0, 1, 51, 255, True)", {"image": U8}, None, "image", "float32", [[[0.0, 0.0, 1.0]]]),
    ("value_range(0, 2, (0, 51, 0), (255, 102, 510))", {"image": U8}, None, "image", "float32", [[[0.0, 0.0, 1.0]]]),
    ("value_range(-1, 1, (0, 51, 0), 255, True)", {"image": U8}, None, "image", "float32", [[[-1.0, -1.0, 1.0]]]),
    ("onehot(5, on=1, off=0)", {"labels": np.int64(3)}, None, "labels", "int32", [0, 0, 0, 1, 0]),
    ("onehot(5, on=1, off=0)", {"labels": np.array([1, 3], np.int64)}, None, "labels", "float32", [0, 1, 0, 1, 0]),
    ("onehot(5, on=1, off=0, multi=False)", {"labels": np.array([1, 3], np.int64)}, None, "labels", "int32", [[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]),
    ("onehot(5, on=2, off=-1)", {"labels": np.int32(4)}, None, "labels", "int32", [-1, -1, -1, -1, 2]),
    ("onehot(5, on=0.9, off=0.025)", {"labels": np.int64(3)}, None, "labels", "float32", [0.025, 0.025, 0.025, 0.9, 0.025]),
    ("onehot(4, on=True, off=False)", {"labels": np.int64(2)}, None, "labels", "bool", [False, False, True, False]),
    ("onehot(4)", {"labels": np.int64(-1)}, None, "labels", "float32", [0, 0, 0, 0]),
    ("onehot(4)", {"labels": np.array([2, 2, 0], np.int32)}, None, "labels", "float32", [1, 0, 1, 0]),
    ("onehot(3, multi=False)", {"labels": np.array([[1, 2]], np.int64)}, None, "labels", "float32", [[[0, 1, 0], [0, 0, 1]]]),
    ('setdefault("text_loss", [1])', {"image": U8}, None, "text_loss", "int32", [1]),  # as in upstream's JetFormer configs
    ('setdefault("eos", [1, 2])', {"image": U8}, None, "eos", "int32", [1, 2]),
    ('setdefault("eos", [[1, 2]])', {"image": U8}, None, "eos", "int32", [[1, 2]]),
    ('setdefault("eos", ["a", "b"])', {"image": U8}, None, "eos", "object", [b"a", b"b"]),
    ('setdefault("eos", [7])', {"eos": np.zeros([0], np.int64)}, I64_NONE, "eos", "int64", [7]),
    ('setdefault("eos", [7])', {"eos": np.array([3, 4], np.int64)}, I64_NONE, "eos", "int64", [3, 4]),
    ('setdefault("eos", 7)', {"eos": np.zeros([0], np.int64)}, I64_NONE, "eos", "int64", [7]),
    ('setdefault("suffix", "")', {"suffix": np.array(b"")}, None, "suffix", "object", b""),
    (
        'setdefault("boxes", [0.1, 0.2, 0.3, 0.4])',
        {"boxes": np.zeros([0, 4], np.float32)},
        {"boxes": tf.TensorSpec([None, 4], tf.float32)},
        "boxes",
        "float32",
        [[0.1, 0.2, 0.3, 0.4]],
    ),
]


@pytest.mark.parametrize(("pp", "data", "signature", "out_key", "dtype", "expected"), GENERAL)
def test_general_ops_match_upstream(mode, pp, data, signature, out_key, dtype, expected):
    out = np.asarray(run(pp, data, mode, signature)[out_key])
    assert (out.dtype.name if out.dtype.kind not in "SO" else "object") == dtype
    np.testing.assert_array_equal(out, np.asarray(expected, None if dtype == "object" else dtype))


# pp strings we refuse when the pp string is built, with upstream's result.
REFUSED_AT_BUILD = [
    ("value_range(1, -1, clip_values=True)", "needs vmin < vmax"),  # upstream: 1.0 everywhere (tf.clip_by_value with min > max gives min)
    ("value_range(255, 0, in_min=0, in_max=1, clip_values=True)", "needs vmin < vmax"),  # upstream: 255.0 everywhere
    ("onehot(5, on=1, off=0.0)", "on and off must be numbers of the same type"),  # upstream: TypeError on a scalar label, float32 multi-hot
    ('setdefault("eos", [])', "is empty"),  # upstream: InvalidArgumentError from tf.broadcast_to on every example
    ('setdefault("eos", [[1], [2, 3]])', "rectangular list"),  # upstream: ValueError from tf.constant on every example
]


@pytest.mark.parametrize(("pp", "message"), REFUSED_AT_BUILD)
def test_refused_at_build(pp, message):
    with pytest.raises(ValueError, match=message):
        builder.get_preprocess_fn(pp)


def test_errors_when_applied(mode):
    """Cases that only the example's shape or dtype rules out: one-line errors where upstream aborts the process or raises deep in TF."""
    # Upstream's scatter_nd aborts the process (a failed CHECK in tensor_shape.cc) on labels of rank 2.
    with pytest.raises(ValueError, match=r"multi-hot needs labels of rank 0 or 1, key 'labels' has shape \(2, 2\); use multi=False"):
        run("onehot(4)", {"labels": np.array([[1, 2], [0, 3]], np.int64)}, mode)
    with pytest.raises(ValueError, match=r"value \[7, 8\] \(shape \[2\]\) cannot fill key 'eos'"):  # upstream: tf.broadcast_to fails
        run('setdefault("eos", [7, 8])', {"eos": np.zeros([0], np.int64)}, mode, I64_NONE)
    with pytest.raises(ValueError, match="value 0.5 does not convert to the dtype int64 of key 'eos'"):  # upstream: TypeError
        run('setdefault("eos", 0.5)', {"eos": np.zeros([0], np.int64)}, mode, I64_NONE)
