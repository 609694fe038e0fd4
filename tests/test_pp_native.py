"""The native resize kernel (big_vision/pp/native.py): built here, bit-identical to TF's resize + clip + cast, used by the pp ops, and when it
cannot be built the pp ops keep TF's kernel with one warning."""

import logging

import numpy as np
import pytest

from big_vision.pp import builder as pp_builder
from big_vision.pp import native
from utils.tf_import import tf


def test_the_native_resize_gives_tfs_bits_on_random_shapes():
    op = native.get_resize_bilinear_uint8()
    assert op is not None, "g++ and TF's headers are on this machine: the kernel must build and pass its check"
    rng = np.random.default_rng(1)
    for i in range(120):
        shape = (int(rng.integers(1, 520)), int(rng.integers(1, 520)), int(rng.choice([1, 2, 3, 4])))
        hw = (224, 224) if i % 3 == 0 else (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        x = tf.constant(rng.integers(0, 256, shape, dtype=np.uint8))
        got, want = op(x, tf.constant(hw, tf.int32)).numpy(), native.tf_resize_uint8(x, hw).numpy()
        assert got.shape == want.shape == (*hw, shape[2]), (shape, hw)
        np.testing.assert_array_equal(got, want, err_msg=f"{shape} -> {hw}")


@pytest.mark.parametrize("pp_str", ["resize(224)", "decode_jpeg_and_inception_crop(32)", "resize_small(40, method='bilinear')"])
def test_pp_ops_run_the_native_kernel_in_tf_data(pp_str):
    jpeg = tf.io.encode_jpeg(tf.constant(np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)))
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    pp = pp_builder.get_preprocess_fn(pp_str)
    example = {"image": jpeg if pp_str.startswith("decode") else decoded}
    graph = tf.function(pp).get_concrete_function({"image": tf.TensorSpec.from_tensor(example["image"])}).graph
    assert "ResizeBilinearUint8" in {op.type for op in graph.get_operations()}, pp_str
    got = next(iter(tf.data.Dataset.from_tensors(example).map(pp)))["image"]
    assert got.dtype == tf.uint8 and got.shape.is_fully_defined()
    if pp_str == "resize(224)":
        np.testing.assert_array_equal(got.numpy(), native.tf_resize_uint8(decoded, (224, 224)).numpy())


def test_without_a_compiler_or_when_switched_off_the_pp_ops_keep_tfs_kernel(monkeypatch, tmp_path, caplog):
    build = native.get_resize_bilinear_uint8.__wrapped__  # the uncached function: this process keeps its built op
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert build() is None
    monkeypatch.delenv(native.ENV_SWITCH)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-cxx"))
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert build() is None
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert build() is None
    assert [r.getMessage() for r in caplog.records] == [
        f"pp resize: TF's kernel (the native one is not used: no C++ compiler {str(tmp_path / 'no-such-cxx')!r} (set CXX); PP_NATIVE_OPS=0 skips it)",
        "pp resize: TF's kernel (the native one is not used: false failed: no output; PP_NATIVE_OPS=0 skips it)",
    ]
    assert not [f for f in (tmp_path / "cache").iterdir()], "a failed build leaves nothing in the cache"
