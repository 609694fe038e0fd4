"""TFDS input: the embedded digits dataset, per-process sharding, exact eval coverage, fixed shapes."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_vision import input_pipeline as ip

PP = 'decode|resize(16)|value_range(-1, 1)|keep("image", "label", "id")'


def test_digits_builder_matches_sklearn(digits_dir):
    from sklearn.datasets import load_digits

    builder = ip.make_builder("sklearn_digits", digits_dir)
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360
    digits = load_digits()
    ex = next(iter(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False).take(1))))
    expected = np.round(digits.images[ex["id"]] * 255.0 / 16.0).astype(np.uint8)
    np.testing.assert_array_equal(ex["image"][:, :, 0], expected)
    assert ex["label"] == digits.target[ex["id"]]


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_every_example_exactly_once(digits_dir, process_count):
    builder = ip.make_builder("sklearn_digits", digits_dir)
    batch_size = 16  # per process; 360 examples do not fill the last batch for 1, 2 or 3 processes
    seen, n_batches_all = [], set()
    for i in range(process_count):
        ds, n_batches = ip.make_eval_dataset(builder, "test", PP, batch_size, process_index=i, process_count=process_count)
        n_batches_all.add(n_batches)
        batches = list(ip.iterate_torch(ds))
        assert len(batches) == n_batches
        for b in batches:
            assert b["image"].shape == (batch_size, 3, 16, 16)
            assert b["_mask"].shape == (batch_size,)
            seen += b["id"][b["_mask"]].tolist()
            assert (b["id"][~b["_mask"]] == 0).all()
    assert len(n_batches_all) == 1, "every process must run the same number of eval batches"
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 360


def test_train_is_sharded_seeded_and_resumable(digits_dir):
    builder = ip.make_builder("sklearn_digits", digits_dir)

    def ids(epoch, start_step=0, process_index=0, process_count=1, seed=0):
        ds = ip.make_train_dataset(
            builder, "train", PP, 32, epoch=epoch, start_step=start_step, seed=seed, process_index=process_index, process_count=process_count
        )
        return [b["id"].numpy() for b in ip.iterate_torch(ds)]

    epoch0 = ids(0)
    assert len(epoch0) == 1437 // 32 and all(len(b) == 32 for b in epoch0)
    assert [b.tolist() for b in ids(0)] == [b.tolist() for b in epoch0], "same seed and epoch -> same order"
    assert ids(1)[0].tolist() != epoch0[0].tolist(), "each epoch reshuffles"
    assert [b.tolist() for b in ids(0, start_step=5)] == [b.tolist() for b in epoch0[5:]], "resume replays the rest of the epoch"
    p0, p1 = np.concatenate(ids(0, process_count=2)), np.concatenate(ids(0, process_index=1, process_count=2))
    assert not set(p0) & set(p1), "processes read disjoint examples"


def test_unknown_dataset_and_bad_split_fail_clearly(digits_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'sklearn_digit' is not prepared.*did you mean sklearn_digits"):
        ip.make_builder("sklearn_digit", digits_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ip.make_builder("sklearn_digits", str(tmp_path / "nope"))
    builder = ip.make_builder("sklearn_digits", digits_dir)
    with pytest.raises(ValueError, match=r"bad split 'tarin'.*splits are"):
        ip.get_split(builder, "tarin")
