"""What pp ops see and what reaches torch: big_vision's `_id`/`tfds_id`, a `_mask` set by the pp string, and string features."""

import numpy as np
import pytest
import torch

import engine
from big_vision import input_pipeline as ip
from big_vision.pp import registry
from tasks.base import EvalPartial
from utils.device import RuntimeConfig
from utils.tf_import import tf

DECODE = "decode|resize(16)|value_range(-1, 1)"


@registry.register("test_mask_label_is_not")
def _get_mask_label_is_not(label: int, dtype: str = "bool"):
    """A pp op that masks out every example of class `label` (as an op filtering out unusable examples would)."""
    return lambda data: {**data, "_mask": tf.cast(data["label"] != label, dtype)}


@registry.register("test_mask_rows")
def _get_mask_rows():
    return lambda data: {**data, "_mask": tf.ones([2], tf.bool)}


def _eval_batches(builder, pp: str, batch_size: int = 16, process_index: int = 0, process_count: int = 1) -> list[dict]:
    ds, n_batches = ip.make_eval_dataset(builder, "test", pp, batch_size, process_index=process_index, process_count=process_count)
    batches = list(ip.iterate_torch(ds, n_batches=n_batches, strings=True))
    assert len(batches) == n_batches
    return batches


def test_id_and_tfds_id_reach_pp_ops_and_match_big_vision(digits_dir):
    builder = ip.make_builder("sklearn_digits", digits_dir)
    pp = f'{DECODE}|copy("_id", "id_seen")|copy("tfds_id", "tfds_id_seen")|keep("image", "label", "id", "id_seen", "tfds_id_seen")'
    batches = _eval_batches(builder, pp)
    ids_seen, names = [], []
    for b in batches:
        real = b["_mask"]
        assert b["id_seen"].dtype == torch.int32
        ids_seen += b["id_seen"][real].tolist()
        names += [n for n, m in zip(b["tfds_id_seen"], real.tolist(), strict=True) if m]
    assert len(names) == len(set(names)) == 360 and all(n.startswith("sklearn_digits-test.tfrecord-") for n in names)
    # big_vision's `_id`: the keyed strong hash of tfds_id, bitcast to int32 pairs, first one (big_vision/datasets/tfds.py).
    h = tf.strings.to_hash_bucket_strong(tf.constant(names), np.iinfo(np.uint32).max, [3714561454027272724, 8800639020734831960])
    assert ids_seen == tf.bitcast(h, tf.int32)[:, 0].numpy().tolist()
    assert len(set(ids_seen)) == 360

    train = ip.make_train_dataset(builder, "train", f'{DECODE}|copy("_id", "id_seen")|keep("image", "label", "id", "id_seen")', 64)
    batch = next(ip.iterate_torch(train))
    assert batch["id_seen"].shape == (64,) and len(set(batch["id_seen"].tolist())) == 64, "train examples carry _id too"


def test_internal_keys_reach_torch_only_when_the_pp_string_names_them(digits_dir):
    builder = ip.make_builder("sklearn_digits", digits_dir)
    unnamed = _eval_batches(builder, DECODE)[0]  # no keep: every raw feature passes, the internal keys do not
    assert set(unnamed) == {"image", "label", "id", "_mask"}
    named = _eval_batches(builder, f'{DECODE}|keep("image", "label", "_id", "tfds_id")')
    assert set(named[0]) == {"image", "label", "_id", "tfds_id", "_mask"}
    assert named[0]["_id"].dtype == torch.int32
    last = named[-1]  # 360 = 22 x 16 + 8: half of the last batch is padding
    assert last["tfds_id"][8:] == [""] * 8 and (last["_id"][8:] == 0).all()
    train = next(ip.iterate_torch(ip.make_train_dataset(builder, "train", DECODE, 64)))
    assert set(train) == {"image", "label", "id"}


@pytest.mark.parametrize("process_count", [1, 3])
@pytest.mark.parametrize("dtype", ["bool", "int32"])
def test_a_mask_set_by_the_pp_string_is_kept_and_padding_stays_masked(digits_dir, process_count, dtype):
    builder = ip.make_builder("sklearn_digits", digits_dir)
    pp = f'{DECODE}|test_mask_label_is_not(3, "{dtype}")|keep("image", "label", "id", "_mask")'
    labels_in, ids_in, n_rows = [], [], 0
    for i in range(process_count):
        for b in _eval_batches(builder, pp, process_index=i, process_count=process_count):
            assert b["_mask"].dtype == torch.bool
            labels_in += b["label"][b["_mask"]].tolist()
            ids_in += b["id"][b["_mask"]].tolist()
            n_rows += len(b["_mask"])
    all_labels = [int(x["label"]) for x in builder.as_dataset(split="test").as_numpy_iterator()]
    n_threes = all_labels.count(3)
    assert n_threes > 0 and 3 not in labels_in, "an example the pp string masks out stays out"
    assert len(ids_in) == len(set(ids_in)) == 360 - n_threes, "padding is always out, every other example in once"
    assert n_rows > 360, "there was padding to keep out"


def test_a_mask_of_several_values_per_example_is_refused(digits_dir):
    builder = ip.make_builder("sklearn_digits", digits_dir)
    with pytest.raises(ValueError, match=r"sets _mask with shape \(2,\); _mask must be one bool per example"):
        ip.make_eval_dataset(builder, "test", f"{DECODE}|test_mask_rows", 16)


class _NameAccumulator:
    """Records the names of the real examples of every eval batch, as an accumulator that writes per-example predictions would."""

    def __init__(self):
        self.names: list[str] = []
        self.count = torch.zeros(())

    def add(self, outputs: dict, batch: dict) -> None:
        self.count = self.count + outputs["count"]
        self.names += [n for n, m in zip(batch["name"], batch["_mask"].tolist(), strict=True) if m]

    def partial(self) -> EvalPartial:
        return EvalPartial(sums={"count": self.count}, records=self.names)

    def result(self, sums: dict, records: list) -> dict:
        return {"n_examples": sums["count"], "n_names": float(len(set(records)))}


class _NameTask:
    headline = "n_names"
    tracked: dict = {}

    def eval_outputs(self, model, batch):
        assert "name" not in batch, "strings never go to the device step"
        return {"count": batch["_mask"].float().sum()}

    def make_eval_accumulator(self):
        return _NameAccumulator()


def test_eval_string_features_reach_the_accumulator_as_lists_of_str(digits_dir):
    """A string feature (here the record name, copied from tfds_id) stays beside the tensors of each eval batch; train batches drop it."""
    builder = ip.make_builder("sklearn_digits", digits_dir)
    pp = f'{DECODE}|copy("tfds_id", "name")|keep("image", "label", "name")'
    ds, n_batches = ip.make_eval_dataset(builder, "test", pp, 64)
    batch = next(ip.iterate_torch(ds, strings=True))
    assert isinstance(batch["name"], list) and len(batch["name"]) == 64 and all(isinstance(n, str) for n in batch["name"])
    assert "name" not in next(ip.iterate_torch(ds)), "without strings=True they are dropped"
    assert "name" not in next(ip.iterate_torch(ip.make_train_dataset(builder, "train", pp, 64)))

    from datasets import EvalSet

    runtime = RuntimeConfig(device="cpu").make_runtime()
    eval_set = EvalSet(n_batches, 360, lambda: ip.iterate_torch(ds, n_batches=n_batches, strings=True))
    metrics = engine.evaluate_set(torch.nn.Identity(), _NameTask(), eval_set, runtime, lambda b: _NameTask().eval_outputs(None, b))
    assert metrics == {"n_examples": 360.0, "n_names": 360.0}


def test_record_id_is_read_only_when_the_outputs_depend_on_it(digits_dir):
    """The id costs CPU per record: it is read when an output depends on `tfds_id` or `_id` (named, copied, or used by an op), else not."""
    builder = ip.make_builder("sklearn_digits", digits_dir)
    uses = [
        f'{DECODE}|keep("image", "label", "_id")',
        f'{DECODE}|copy("tfds_id", "name")|keep("image", "name")',
        f'{DECODE}|test_mask_label_is_not(3)|copy("_id", "x")|keep("image", "x")',
    ]
    for pp in uses:
        assert ip.reads_record_id(builder, "train", pp, True), pp
    for pp in (f'{DECODE}|keep("image", "label")', 'decode|inception_crop(16)|flip_lr|value_range(-1, 1)|keep("image", "label")', DECODE):
        assert not ip.reads_record_id(builder, "train", pp, True), pp
    ds = ip.make_train_dataset(builder, "train", f'{DECODE}|keep("image", "label")', 64)
    assert set(ds.element_spec) == {"image", "label"}
    batch = next(ip.iterate_torch(ip.make_train_dataset(builder, "train", f'{DECODE}|keep("image", "_id")', 64)))
    assert batch["_id"].dtype == torch.int32 and len(set(batch["_id"].tolist())) == 64
