"""--tfds_cache_raw: each train record is read from storage once per process, and the train order stays seeded and exactly resumable.

Reads are counted by the kernel: the bytes this process read through read()/pread() (`rchar` in /proc/self/io) while an epoch ran, divided by the size
of the split's shard files, is the number of passes over the records (TF reads tfrecord shards with pread, never mmap).
"""

import dataclasses
import itertools
import os
import shutil

import pytest

import datasets
from big_vision import input_pipeline as ip

PP = 'decode|resize(16)|value_range(-1, 1)|keep("image", "label", "id")'
N_TRAIN = 1437


def _rchar() -> int:
    with open("/proc/self/io") as fd:
        return next(int(line.split()[1]) for line in fd if line.startswith("rchar:"))


def _config(data_dpath: str, **kw) -> datasets.DataConfig:
    return datasets.DataConfig(data_set="digits", tfds_data_dir=data_dpath, big_vision_pp_train=PP, batch_size=64, seed=7, **kw)


def _epoch_ids(data: datasets.Data, epoch: int, start_step: int = 0) -> list[list[int]]:
    """The ids of one epoch's batches, taken as the trainer takes them: exactly the epoch's steps, then the iterator is left alone."""
    batches = itertools.islice(data.train_batches(epoch, start_step), data.steps_per_epoch - start_step)
    return [b["id"].tolist() for b in batches]


@pytest.fixture()
def own_digits(digits_dir, tmp_path) -> str:
    """A private copy of the prepared digits data (the test moves its shard files)."""
    dpath = str(tmp_path / "tfds")
    shutil.copytree(digits_dir, dpath)
    return dpath


def _shards(data_dpath: str) -> list[str]:
    builder = ip.make_builder(datasets.DIGITS_NAME, data_dpath)
    return ip.get_shards(builder, "train")


def _run_epochs(data: datasets.Data, shards: list[str], hide_after_first: bool) -> tuple[list[float], list[list[list[int]]]]:
    """Three epochs; the passes over the shard files read by the end of each epoch (cumulative), and each epoch's batch ids. `hide_after_first`:
    the shards are moved away after epoch 0."""
    shard_bytes = sum(os.path.getsize(f) for f in shards)
    start = _rchar()
    passes, epochs = [], []
    for epoch in range(3):
        epochs.append(_epoch_ids(data, epoch))
        passes.append((_rchar() - start) / shard_bytes)
        if hide_after_first and epoch == 0:
            for f in shards:
                os.rename(f, f + ".hidden")
    return passes, epochs


def test_cache_raw_reads_each_record_once_over_three_epochs(own_digits):
    shards = _shards(own_digits)
    # The next epoch's pipeline starts as soon as the current one has produced its last batch, which can be before the consumer has taken it
    # (prefetch): by the end of epoch k, k + 1 passes are read, and part or all of the next one.
    plain_passes, plain = _run_epochs(datasets.build_data(_config(own_digits, tfds_epochs_ahead=0)), shards, hide_after_first=False)
    for k, cum in enumerate(plain_passes):
        assert k + 0.99 < cum < k + 2.01, f"without the cache every epoch reads the split again: {plain_passes}"
    # One epoch ahead (the default): the next epoch's pipeline fills its shuffle buffer (all 1437 records) while the current one runs.
    ahead_passes, ahead = _run_epochs(datasets.build_data(_config(own_digits)), shards, hide_after_first=False)
    assert ahead == plain
    for k, cum in enumerate(ahead_passes):
        assert k + 1.99 < cum < k + 3.01, f"one epoch ahead: {ahead_passes}"

    cached_passes, cached = _run_epochs(datasets.build_data(_config(own_digits, tfds_cache_raw=True)), shards, hide_after_first=True)
    # The shard files are gone from epoch 1 on: those epochs can only come from RAM.
    assert 0.99 < cached_passes[0] and cached_passes[2] < 1.05, f"one pass in all: {cached_passes}"
    steps = N_TRAIN // 64
    for ids in cached:
        flat = sum(ids, [])
        assert len(ids) == steps and len(flat) == len(set(flat)) == steps * 64, "each epoch: full batches of distinct examples"
    assert cached[0] == plain[0], "epoch 0 reads the files in the same seeded order with or without the cache"
    assert cached[1] != cached[0] and cached[2] != cached[1], "the shuffle buffer reshuffles every epoch"


def test_cache_raw_completes_when_the_consumer_stops_at_the_last_batch(own_digits):
    """No shuffle buffer, prefetch or parallel map to read ahead: only asking for the end right after the last full batch lets the cache complete."""
    config = _config(own_digits, tfds_cache_raw=True, tfds_shuffle_buffer=1, tfds_prefetch=0, tfds_num_parallel_calls=1)
    passes, epochs = _run_epochs(datasets.build_data(config), _shards(own_digits), hide_after_first=True)
    assert 0.99 < passes[0] and passes[2] < 1.05, f"one pass in all: {passes}"
    assert epochs[1] == epochs[2] == epochs[0], "without a shuffle buffer every epoch is the fixed cached order"


def test_cache_raw_order_is_seeded_and_resumes_exactly(own_digits):
    warm = datasets.build_data(_config(own_digits, tfds_cache_raw=True))
    epochs = [_epoch_ids(warm, e) for e in range(3)]
    # A resumed process starts cold: its cache fills during the resumed epoch, in the same fixed order, so the rest of that epoch is the same.
    cold = datasets.build_data(_config(own_digits, tfds_cache_raw=True))
    assert _epoch_ids(cold, 2, start_step=5) == epochs[2][5:]
    assert _epoch_ids(cold, 1) == epochs[1], "after a resumed epoch the warm cache gives the same epochs"
    other_seed = datasets.build_data(dataclasses.replace(_config(own_digits, tfds_cache_raw=True), seed=8))
    assert _epoch_ids(other_seed, 0) != epochs[0]


def test_cache_raw_processes_read_disjoint_shares(own_digits):
    ids = [sum(_epoch_ids(datasets.build_data(_config(own_digits, tfds_cache_raw=True), i, 2), 1), []) for i in range(2)]
    assert not set(ids[0]) & set(ids[1])
    assert len(ids[0]) == len(ids[1]) == (N_TRAIN // 2 // 32) * 32
