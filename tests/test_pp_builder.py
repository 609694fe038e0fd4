"""pp string parsing: grammar, build-time errors, key routing, and the big_vision ImageNet pp strings on real JPEG bytes."""

import numpy as np
import pytest
import skimage.data

from big_vision.pp import builder, registry
from utils.tf_import import tf

MODES = ("eager", "tf_data")
I1K_TRAIN = 'decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)|onehot(1000, key="label", key_result="labels")|keep("image", "labels")'
I1K_TRAIN_RANDAUG = (
    'decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,15)|value_range(-1, 1)|onehot(1000, key="label", key_result="labels")|keep("image", "labels")'
)
I1K_EVAL = 'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|onehot(1000, key="label", key_result="labels")|keep("image", "labels")'


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


def run(pp_str: str, data: dict, mode: str) -> dict:
    """One example through the pp string, eagerly or as `Dataset.map`; numpy results."""
    fn = builder.get_preprocess_fn(pp_str)
    if mode == "eager":
        return {k: v.numpy() for k, v in fn({k: tf.constant(v) for k, v in data.items()}).items()}
    return next(tf.data.Dataset.from_tensors(data).map(fn).as_numpy_iterator())


@pytest.fixture(scope="module")
def cat_jpeg() -> bytes:
    """A real photo (300x451, landscape) as JPEG bytes, as TFDS stores ImageNet images."""
    return tf.io.encode_jpeg(skimage.data.chelsea(), quality=90).numpy()


def test_all_issue_ops_are_registered():
    expected = {
        "decode",
        "resize",
        "decode_jpeg_and_inception_crop",
        "inception_crop",
        "random_crop",
        "central_crop",
        "resize_small",
        "resize_long",
        "flip_lr",
        "vgg_value_range",
        "clip_value_range",
    }
    expected |= {"value_range", "keep", "drop", "onehot", "copy", "squeeze_last_dim", "pad_to_shape", "reshape", "setdefault", "choice", "randaug"}
    assert expected <= set(registry.list_ops())


def test_empty_segments_are_skipped(mode):
    data = {"image": np.array([0, 255], np.uint8), "label": np.int64(1)}
    out = run("||value_range(0, 1)|||keep('image')||", data, mode)
    assert list(out) == ["image"]
    np.testing.assert_allclose(out["image"], [0.0, 1.0])


@pytest.mark.parametrize("pp_str", [None, "", "|", " | "])
def test_empty_pipeline_is_identity(mode, pp_str):
    out = run(pp_str, {"image": np.array([3, 4], np.uint8)}, mode)
    assert list(out) == ["image"]
    np.testing.assert_array_equal(out["image"], [3, 4])


def test_whitespace_around_segments_and_arguments_is_ignored(mode):
    out = run(" resize( 2 ) |  value_range( 0 , 1 , key = 'image' ) ", {"image": np.full((4, 4, 1), 255, np.uint8)}, mode)
    np.testing.assert_allclose(out["image"], np.ones((2, 2, 1)))


@pytest.mark.parametrize("segment", ["resize(0.1/4)", "resize(size)", "resize(2, method=m)", 'resize(f"{2}")', "resize(-(-2))", "resize([2, 2 * 2])"])
def test_only_literal_arguments(segment):
    with pytest.raises(ValueError, match="must be Python literals"):
        builder.get_preprocess_fn(f"decode|{segment}")


def test_literal_kinds_are_accepted():
    # negative numbers, tuples, lists, strings, True/False/None all pass ast.literal_eval
    builder.get_preprocess_fn(
        'value_range(-1, 1, in_min=(0, 0, 0), in_max=[255, 255, 255], clip_values=True)|pad_to_shape((4, None), key="x")|onehot(10, key_result=None)'
    )


def test_syntax_error_names_the_segment():
    with pytest.raises(ValueError, match=r"syntax error in 'resize\(224'"):
        builder.get_preprocess_fn("decode|resize(224")


def test_unknown_op_lists_close_matches():
    with pytest.raises(ValueError, match="reszie") as e:
        builder.get_preprocess_fn("decode|reszie(224)")
    assert "did you mean" in str(e.value) and "resize" in str(e.value)
    with pytest.raises(ValueError, match="resize_small"):
        builder.get_preprocess_fn("resize_smal(256)")
    with pytest.raises(ValueError, match="known ops:"):  # nothing close: the full list
        builder.get_preprocess_fn("xyzzy")


@pytest.mark.parametrize("segment", ["resize()", "resize(2, 'bilinear', False, 1)", "resize(2, mehtod='area')", "central_crop(1, 2)"])
def test_wrong_arguments_name_the_signature(segment):
    name = segment.split("(")[0]
    with pytest.raises(ValueError, match="signature is") as e:
        builder.get_preprocess_fn(segment)
    assert f"{name}(" in str(e.value).split("signature is")[1]
    assert "key" in str(e.value).split("signature is")[1]  # the routing keywords are part of the advertised signature


@pytest.mark.parametrize(
    ("pp_str", "fragments"),
    [
        ("resize(0)", ["resize", "0"]),
        ("resize((2, -1))", ["resize", "(2, -1)"]),
        ("resize(2, method='cubic')", ["resize", "'cubic'"]),
        ("value_range(1, 1)", ["value_range", "vmin=1", "vmax=1"]),
        ("value_range(0, 1, 5, 5)", ["value_range", "in_min=5"]),
        ("resize_small(0)", ["resize_small", "0"]),
        ("resize_long(224.5)", ["resize_long", "224.5"]),
        ("inception_crop(224, area_min=0)", ["inception_crop", "area_min=0"]),
        ("inception_crop(224, area_min=60, area_max=50)", ["inception_crop", "area_max=50"]),
        ("decode_jpeg_and_inception_crop(224, ratio_min=2.0, ratio_max=1.0)", ["decode_jpeg_and_inception_crop", "ratio_min=2.0"]),
        ("random_crop(0)", ["random_crop", "0"]),
        ("central_crop(-3)", ["central_crop", "-3"]),
        ("vgg_value_range(std=(1, 0, 1))", ["vgg_value_range", "(1, 0, 1)"]),
        ("onehot(0)", ["onehot", "0"]),
        ("pad_to_shape((2,), where='middle')", ["pad_to_shape", "'middle'"]),
        ("pad_to_shape(3)", ["pad_to_shape", "3"]),
        ("reshape((-1, -1))", ["reshape", "(-1, -1)"]),
        ("setdefault('x', [])", ["setdefault", "[]", "empty"]),
        ("choice(0, key='a')", ["choice", "0"]),
        ("choice(inkey='a', outkey=['b', 'c'])", ["choice", "['b', 'c']"]),
        ("choice()", ["choice", "key="]),
        ("randaug(-1)", ["randaug", "-1"]),
        ("randaug(2, 'ten')", ["randaug", "'ten'"]),
        ("decode(channels=2)", ["decode", "2"]),
    ],
)
def test_bad_static_arguments_fail_at_build_time(pp_str, fragments):
    with pytest.raises(ValueError) as e:
        builder.get_preprocess_fn(f"decode|{pp_str}|keep('image')")
    assert all(f in str(e.value) for f in fragments), str(e.value)


def test_key_inkey_outkey_routing(mode):
    x = np.full((4, 4, 1), 200, np.uint8)
    out = run('resize(2, inkey="image", outkey="small")', {"image": x}, mode)
    assert out["image"].shape == (4, 4, 1) and out["small"].shape == (2, 2, 1)
    np.testing.assert_array_equal(out["small"], 200)
    out = run('resize(2, key="im2")', {"image": x, "im2": x}, mode)
    assert out["image"].shape == (4, 4, 1) and out["im2"].shape == (2, 2, 1)
    out = run('value_range(0, 1, inkey="image", outkey="image")|value_range(0, 2, key="raw", in_max=100)', {"image": x, "raw": np.float32(50)}, mode)
    np.testing.assert_allclose(out["image"], 200 / 255, rtol=1e-6)
    np.testing.assert_allclose(out["raw"], 1.0)


def test_missing_key_is_a_clear_error():
    with pytest.raises(KeyError, match="reads key 'img'"):
        builder.get_preprocess_fn('resize(2, key="img")')({"image": tf.zeros([4, 4, 1])})


def test_i1k_eval_string_on_real_jpeg(mode, cat_jpeg):
    out = run(I1K_EVAL, {"image": cat_jpeg, "label": np.int64(281)}, mode)
    assert sorted(out) == ["image", "labels"]
    # Reference, step by step: 300x451 -> factor 256/300 -> 256x385 (384.85 rounds up), area resize, truncating cast, centre 224 crop at (16, 80).
    decoded = tf.io.decode_image(cat_jpeg, channels=3, expand_animations=False)
    small = tf.cast(tf.clip_by_value(tf.image.resize(decoded, (256, 385), method="area"), 0, 255), tf.uint8).numpy()
    expected = small[16:240, 80:304].astype(np.float32) / 255 * 2 - 1
    assert out["image"].shape == (224, 224, 3) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["image"], expected, atol=1e-6)
    assert out["labels"].shape == (1000,) and out["labels"][281] == 1 and out["labels"].sum() == 1


@pytest.mark.parametrize("pp_str", [I1K_TRAIN, I1K_TRAIN_RANDAUG])
def test_i1k_train_strings_on_real_jpeg(mode, cat_jpeg, pp_str):
    out = run(pp_str, {"image": cat_jpeg, "label": np.int64(281), "file_name": b"n02123045_1.JPEG"}, mode)
    assert sorted(out) == ["image", "labels"]
    assert out["image"].shape == (224, 224, 3) and out["image"].dtype == np.float32
    assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0
    # uint8 levels mapped to [-1, 1]: every value is (k / 255) * 2 - 1 for an integer k.
    levels = (out["image"] + 1) / 2 * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert out["labels"].shape == (1000,) and out["labels"][281] == 1 and out["labels"].sum() == 1
