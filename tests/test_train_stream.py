"""The train stream (all epochs from one tf.data pipeline) gives exactly the batches of one pipeline per epoch, and the engine's epoch requests
continue it instead of rebuilding it."""

import numpy as np
import pytest

import datasets
from big_vision import input_pipeline as ip
from big_vision import train_stream

# Random crops and flips from stateless per-example seeds, and the batch-tail value_range: every seed and the order must carry over.
RANDOM_PP = 'decode|resize(36)|random_crop(32)|flip_lr|value_range(-1, 1)|keep("image", "label", "id")'
KW = dict(seed=3, shuffle_buffer=500)


def _per_epoch(builder, epoch: int, start_step: int = 0, **kw) -> list[dict]:
    ds = ip.make_train_dataset(builder, "train", RANDOM_PP, 64, epoch=epoch, start_step=start_step, **{**KW, **kw})
    return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("epochs_ahead", [0, 1, 2])
def test_stream_equals_one_pipeline_per_epoch(digits_dir, epochs_ahead):
    builder = ip.make_builder(datasets.DIGITS_NAME, digits_dir)
    want = _per_epoch(builder, 1, start_step=19) + _per_epoch(builder, 2) + _per_epoch(builder, 3)
    assert len(want) == 3 + 2 * (1437 // 64)
    ds = train_stream.make_train_stream(builder, "train", RANDOM_PP, 64, start_epoch=1, start_step=19, epochs_ahead=epochs_ahead, **KW)
    for i, (got, ref) in enumerate(zip(ds.as_numpy_iterator(), want, strict=False)):
        for k in ("image", "label", "id"):
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"batch {i} {k}")
    assert want[3]["image"].dtype == np.float32 and want[3]["image"].min() >= -1


def test_stream_with_the_raw_cache_equals_one_pipeline_per_epoch(digits_dir):
    builder = ip.make_builder(datasets.DIGITS_NAME, digits_dir)
    raw = ip.make_raw_cache(builder, "train", seed=3)
    want = _per_epoch(builder, 0, raw=ip.make_raw_cache(builder, "train", seed=3)) + _per_epoch(builder, 1, raw=raw)
    ds = train_stream.make_train_stream(builder, "train", RANDOM_PP, 64, raw=ip.make_raw_cache(builder, "train", seed=3), **KW)
    got = [b["id"] for b, _ in zip(ds.as_numpy_iterator(), want, strict=False)]
    np.testing.assert_array_equal(np.stack(got), np.stack([b["id"] for b in want]))


def test_engine_requests_continue_one_pipeline(digits_dir):
    builder = ip.make_builder(datasets.DIGITS_NAME, digits_dir)
    per_epoch = [b["id"] for epoch in range(3) for b in _per_epoch(builder, epoch)]
    stream = train_stream.TrainStream(
        lambda e, s: train_stream.make_train_stream(builder, "train", RANDOM_PP, 64, start_epoch=e, start_step=s, **KW), 1437 // 64
    )
    ids = [b["id"].numpy() for epoch in range(3) for b in stream.epoch(epoch, 0)]
    np.testing.assert_array_equal(np.stack(ids), np.stack(per_epoch))
    assert stream.n_built == 1, "three epochs read in order come from one pipeline"
    # A resume (another position) builds a new pipeline from there, with the same batches.
    resumed = [b["id"].numpy() for b in stream.epoch(1, 7)]
    np.testing.assert_array_equal(np.stack(resumed), np.stack(per_epoch[22 + 7 : 44]))
    assert stream.n_built == 2
    # That read epoch 1 to its end: epoch 2 goes on from the same pipeline. Cut short (--max_steps_per_epoch), epoch 3 starts at its beginning.
    cut = stream.epoch(2, 0)
    np.testing.assert_array_equal(next(cut)["id"].numpy(), per_epoch[44])
    np.testing.assert_array_equal(next(stream.epoch(3, 0))["id"].numpy(), _per_epoch(builder, 3)[0]["id"])
    assert stream.n_built == 3


def test_training_reads_the_stream(digits_dir):
    config = datasets.DataConfig(data_set="digits", tfds_data_dir=digits_dir, big_vision_pp_train=RANDOM_PP, batch_size=64, seed=3)
    data = datasets.build_data(config)
    ids = [b["id"].numpy() for epoch in range(2) for b in data.train_batches(epoch, 0)]
    builder = ip.make_builder(datasets.DIGITS_NAME, digits_dir)
    want = [b["id"] for epoch in range(2) for b in _per_epoch(builder, epoch, shuffle_buffer=10_000)]
    np.testing.assert_array_equal(np.stack(ids), np.stack(want))
    with pytest.raises(ValueError, match="tfds_epochs_ahead"):
        datasets.DataConfig(data_set="digits", tfds_epochs_ahead=-1)


def test_stream_misuse_is_an_error(digits_dir):
    builder = ip.make_builder(datasets.DIGITS_NAME, digits_dir)
    stream = train_stream.TrainStream(lambda e, s: train_stream.make_train_stream(builder, "train", RANDOM_PP, 64, start_epoch=e, start_step=s), 22)
    first = stream.epoch(0)
    next(first)
    second = stream.epoch(0, 5)  # another position: a new pipeline; the first reader may not go on
    next(second)
    with pytest.raises(RuntimeError, match="another reader of the same train stream"):
        next(first)
    with pytest.raises(ValueError, match="start step 22 of epoch 0 is outside its 22 steps"):
        stream.epoch(0, 22)
    with pytest.raises(ValueError, match="--tfds_epochs_ahead -1: give 0"):
        train_stream.make_train_stream(builder, "train", RANDOM_PP, 64, epochs_ahead=-1)


def test_batches_come_from_tensorflows_pool_allocator(digits_dir):
    """utils/process.py turns on TF's BFC pool for host tensors (a malloc'd 77 MB ImageNet batch is a fresh mmap and page faults each step)."""
    from utils.tf_import import tf

    tf.config.experimental.reset_memory_stats("CPU:0")  # raises ValueError under the default malloc allocator, which keeps no statistics
    builder = ip.make_builder(datasets.DIGITS_NAME, digits_dir)
    stream = train_stream.TrainStream(lambda e, s: train_stream.make_train_stream(builder, "train", RANDOM_PP, 64, start_epoch=e, start_step=s), 22)
    batch_bytes = 64 * 32 * 32 * 3 * 4
    for epoch in range(2):
        for _ in stream.epoch(epoch):
            pass
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    # The float batches were in the pool and went back to it: a few were in use at once (prefetch, the epoch ahead), not all 44.
    assert 2 * batch_bytes <= peak < 30 * batch_bytes, peak
