"""Numbers of the general pp ops, each run eagerly and inside tf.data.Dataset.map.

Ops are built from pp strings through the builder, as a config would use them. References are plain numpy and hand-computed values.
"""

import numpy as np
import pytest

from big_vision.pp import builder
from tests.pp_helpers import MODES, run, run_n
from utils.tf_import import tf


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


# ---------------------------------------------------------------- general ops


def test_value_range(mode):
    x = np.array([[[0, 51, 255]]], np.uint8)
    np.testing.assert_allclose(run("value_range(-1, 1)", {"image": x}, mode)["image"], [[[-1.0, -0.6, 1.0]]], atol=1e-6)
    np.testing.assert_allclose(run("value_range(0, 1, 51, 255, True)", {"image": x}, mode)["image"], [[[0.0, 0.0, 1.0]]], atol=1e-6)
    np.testing.assert_allclose(run("value_range(0, 2, (0, 51, 0), (255, 102, 510))", {"image": x}, mode)["image"], [[[0.0, 0.0, 1.0]]], atol=1e-6)


VALUE_RANGES = [(-1, 1, 0, 255), (0, 1, 0, 255), (1, -1, 0, 255), (0, 1, 51, 255), (0, 2, (0, 51, 0), (255, 102, 510)), (-1, 1, (0, 0, 0), (255, 255, 255))]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_value_range_short_form_is_bit_identical_to_the_formula(mode, dtype):
    """On 8-bit inputs value_range may use a shorter form (x / 127.5 - 1), chosen only when it gives the formula's float32 bits for all 256
    values: every value of the dtype, per channel, bit for bit against the formula computed op by op in TF, in a few random settings too."""
    from big_vision.pp import ops_general

    rng = np.random.RandomState(0)
    settings = VALUE_RANGES + [tuple(float(v) for v in (rng.uniform(-3, 0), rng.uniform(0.5, 3), rng.randint(0, 60), rng.randint(61, 300))) for _ in range(6)]
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1).astype(dtype).reshape(-1, 1, 1).repeat(3, -1)
    n_short = 0
    for vmin, vmax, lo, hi in settings:
        got = run(f"value_range({vmin}, {vmax}, {lo}, {hi})", {"image": x}, mode)["image"]
        xf = tf.cast(tf.constant(x), tf.float32)
        lo_t, hi_t = tf.constant(lo, tf.float32), tf.constant(hi, tf.float32)
        want = (vmin + ((xf - lo_t) / (hi_t - lo_t)) * (vmax - vmin)).numpy()
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32)), (vmin, vmax, lo, hi)
        n_short += ops_general.get_exact_short_form(tf.as_dtype(dtype), vmin, vmax, lo, hi) is not None
    assert ops_general.get_exact_short_form(tf.uint8, -1, 1, 0, 255) is not None, "the ImageNet setting takes the short form"
    assert n_short >= len(VALUE_RANGES) - 1


def test_onehot_single_label(mode):
    out = run('onehot(5, key="label", key_result="labels", on=0.9, off=0.025)', {"label": np.int64(3)}, mode)
    np.testing.assert_allclose(out["labels"], [0.025, 0.025, 0.025, 0.9, 0.025])
    assert out["labels"].dtype == np.float32 and out["label"] == 3
    np.testing.assert_array_equal(run("onehot(4)", {"labels": np.int32(7)}, mode)["labels"], np.zeros(4))  # out of range: all off


def test_onehot_multi_hot(mode):
    np.testing.assert_array_equal(run("onehot(5)", {"labels": np.array([4, 1, 4], np.int64)}, mode)["labels"], [0, 1, 0, 0, 1])
    sig = {"labels": tf.TensorSpec([None], tf.int64)}
    np.testing.assert_array_equal(run("onehot(3, on=2.0, off=-1.0)", {"labels": np.zeros([0], np.int64)}, mode, sig)["labels"], [-1, -1, -1])
    np.testing.assert_array_equal(run("onehot(3, multi=False)", {"labels": np.array([2, 0], np.int64)}, mode)["labels"], [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(tf.errors.InvalidArgumentError):
        run("onehot(3)", {"labels": np.array([1, 3], np.int64)}, mode)


def test_keep_and_drop(mode):
    data = {"image": np.uint8(1), "label": np.int64(2), "extra": np.float32(3)}
    assert run('keep("image", "label", "missing")', data, mode) == {"image": 1, "label": 2}
    assert run('drop("image", "missing")', data, mode) == {"label": 2, "extra": 3}


def test_copy_is_independent_of_later_ops(mode):
    x = np.array([0, 255], np.uint8)
    out = run('copy("image", "orig")|value_range(0, 1)', {"image": x}, mode)
    np.testing.assert_array_equal(out["orig"], [0, 255])
    np.testing.assert_allclose(out["image"], [0.0, 1.0])
    nested = run('copy("meta", "meta2")', {"meta": {"a": np.int32(1), "b": np.array([2, 3], np.int32)}}, mode)
    assert nested["meta2"]["a"] == 1 and list(nested["meta2"]["b"]) == [2, 3]


def test_squeeze_last_dim(mode):
    x = np.arange(6, dtype=np.int32).reshape(2, 3, 1)
    np.testing.assert_array_equal(run("squeeze_last_dim", {"image": x}, mode)["image"], x[:, :, 0])
    np.testing.assert_array_equal(run('squeeze_last_dim(key="mask")', {"mask": x}, mode)["mask"], x[:, :, 0])


@pytest.mark.parametrize(("where", "rows_before"), [("after", 0), ("before", 3), ("both", 1)])
def test_pad_to_shape(mode, where, rows_before):
    x = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    out = run(f'pad_to_shape((5, None), pad_value=-1, where="{where}", key="x")', {"x": x}, mode)["x"]
    expected = np.full((5, 3), -1, np.int32)
    expected[rows_before : rows_before + 2] = x
    np.testing.assert_array_equal(out, expected)


def test_pad_to_shape_sets_static_shape_and_rejects_too_big():
    ds = tf.data.Dataset.from_generator(lambda: iter([{"x": np.array([1, 2], np.int64)}]), output_signature={"x": tf.TensorSpec([None], tf.int64)})
    ds = ds.map(builder.get_preprocess_fn('pad_to_shape((4,), key="x")'))
    assert ds.element_spec["x"].shape == (4,)
    np.testing.assert_array_equal(next(iter(ds))["x"], [1, 2, 0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the target shape"):
        run('pad_to_shape((1,), key="x")', {"x": np.array([1, 2], np.int64)}, "eager")
    with pytest.raises(ValueError, match="rank 1"):
        run('pad_to_shape((4,), key="x")', {"x": np.zeros((2, 2), np.int64)}, "eager")


def test_reshape_keeps_order_and_dtype(mode):
    x = np.arange(12, dtype=np.int16).reshape(2, 6)
    out = run('reshape((3, -1), key="x")', {"x": x}, mode)["x"]
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, x.reshape(3, 4))


def test_setdefault(mode):
    sig = {"labels": tf.TensorSpec([None], tf.int64)}
    np.testing.assert_array_equal(run('setdefault("labels", 7)', {"labels": np.zeros([0], np.int64)}, mode, sig)["labels"], [7])
    np.testing.assert_array_equal(run('setdefault("labels", 7)', {"labels": np.array([1, 2], np.int64)}, mode, sig)["labels"], [1, 2])
    assert run('setdefault("text", "none")', {"image": np.uint8(0)}, mode)["text"] == b"none"
    sig2 = {"boxes": tf.TensorSpec([None, 4], tf.float32)}
    np.testing.assert_array_equal(run('setdefault("boxes", 0.5)', {"boxes": np.zeros([0, 4], np.float32)}, mode, sig2)["boxes"], np.full((1, 4), 0.5))


def test_choice_single_picks_the_same_row_of_every_key(mode):
    data = {"a": np.arange(5, dtype=np.int32), "b": np.arange(5, dtype=np.int32)[:, None] * [10, 100]}
    outs = run_n('choice(key=["a", "b"])', data, mode, n=20)
    for o in outs:
        assert o["a"].shape == () and list(o["b"]) == [10 * o["a"], 100 * o["a"]]
    assert len({int(o["a"]) for o in outs}) > 1
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="differ in their first dimension"):
        run('choice(key=["a", "b"])', {"a": data["a"], "b": data["b"][:4]}, mode)


def test_choice_subset_is_sorted_distinct_and_shared(mode):
    data = {"a": np.arange(6, dtype=np.int32), "b": np.arange(6, dtype=np.int32) * 10}
    for o in run_n('choice(3, inkey=["a", "b"], outkey="{key}_s")', data, mode, n=8):
        assert list(o["a"]) == list(range(6)) and len(o["a_s"]) == 3
        assert list(o["a_s"]) == sorted(set(o["a_s"])) and list(o["b_s"]) == [10 * v for v in o["a_s"]]
    sizes = {len(o["a"]) for o in run_n('choice([1, 3], key="a")', data, mode, n=30)}
    assert sizes <= {1, 2, 3} and len(sizes) > 1
    np.testing.assert_array_equal(run('choice(9, key="a", fewer_ok=True)', data, mode)["a"], np.arange(6))
    with pytest.raises(ValueError, match="fewer than 9 rows"):  # a static first dimension fails when the op is traced
        run('choice(9, key="a")', data, mode)
    if mode == "tf_data":  # an unknown first dimension fails per example
        with pytest.raises(tf.errors.InvalidArgumentError, match="fewer than 9 rows"):
            run('choice(9, key="a")', {"a": data["a"]}, mode, {"a": tf.TensorSpec([None], tf.int32)})


def test_choice_sets_static_shape():
    ds = tf.data.Dataset.from_generator(lambda: iter([{"a": np.arange(6, dtype=np.int32)}]), output_signature={"a": tf.TensorSpec([None], tf.int32)})
    assert ds.map(builder.get_preprocess_fn('choice(2, key="a")')).element_spec["a"].shape == (2,)
