"""Several named eval sets (--tfds_eval_splits, --tfds_eval_datasets, --tfds_eval_pp): each padded to full batches, every example counted once,
reported apart as eval/NAME/... in the logs, metrics.jsonl, tensorboard and the checkpoint's best values."""

import json
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import config
import datasets
import main
from utils import checkpoint as ckpt
from utils.tf_import import tf  # noqa: F401  (import order: torch_xla before TensorFlow)


class TinyDigitsV2(tfds.core.GeneratorBasedBuilder):
    """A second 10-class 8x8 PNG dataset (37 test images), as imagenet_v2 is a second test set of ImageNet's classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"), "label": tfds.features.ClassLabel(num_classes=10), "id": np.int64}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(37)}

    def _generate_examples(self, n: int):
        rng = np.random.default_rng(0)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": i % 10, "id": 10_000 + i}


class TinyWide(TinyDigitsV2):
    """Like TinyDigitsV2 but with 12 classes: more than a digits model's head."""

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"), "label": tfds.features.ClassLabel(num_classes=12), "id": np.int64}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))


@pytest.fixture(scope="module")
def eval_dir(digits_dir, tmp_path_factory) -> str:
    """The digits data plus the two small eval datasets, prepared in a data dir of this module's own."""
    dpath = str(tmp_path_factory.mktemp("tfds_evals") / "tfds")
    shutil.copytree(digits_dir, dpath)
    for cls in (TinyDigitsV2, TinyWide):
        cls(data_dir=dpath).download_and_prepare()
    return dpath


PP_IDS = 'decode|resize(16)|value_range(-1, 1)|keep("image", "label", "id")'
SETS = {"test": ("test", None, 360), "part": ("train[:100]", None, 100), "v2": ("test", "tiny_digits_v2", 37)}


def _data_config(data_dpath: str, **kw) -> datasets.DataConfig:
    return datasets.DataConfig(
        data_set="digits",
        tfds_data_dir=data_dpath,
        tfds_eval_splits=[f"{name}={split}" for name, (split, _, _) in SETS.items()],
        tfds_eval_datasets=[f"{name}={ds}" for name, (_, ds, _) in SETS.items() if ds],
        tfds_eval_pp=[f"part={PP_IDS.replace('resize(16)', 'resize(16)|flip_lr')}"],
        big_vision_pp_eval=PP_IDS,
        batch_size=24,
        **kw,
    )


@pytest.mark.parametrize("process_count", [1, 3])
def test_each_named_eval_set_covers_its_examples_exactly_once(eval_dir, process_count):
    ids = {name: [] for name in SETS}
    n_batches = {name: set() for name in SETS}
    for i in range(process_count):
        data = datasets.build_data(_data_config(eval_dir), i, process_count)
        assert list(data.get_eval_sets()) == list(SETS)
        assert data.n_eval_examples == 360 + 100 + 37
        for name, eval_set in data.get_eval_sets().items():
            assert eval_set.n_examples == SETS[name][2]
            batches = list(eval_set.batches())
            assert len(batches) == eval_set.n_batches
            n_batches[name].add(eval_set.n_batches)
            for b in batches:
                assert b["image"].shape == (24 // process_count, 3, 16, 16), "every batch full: one shape, one compiled graph"
                ids[name] += b["id"][b["_mask"]].tolist()
    for name, (_, _, n) in SETS.items():
        assert len(ids[name]) == len(set(ids[name])) == n, f"{name}: every example once, none dropped or duplicated"
        assert len(n_batches[name]) == 1, f"{name}: every process runs the same number of batches"
    assert min(ids["v2"]) >= 10_000, "v2 reads its own dataset"


def test_eval_set_flags_fail_with_one_line_naming_the_flag():
    with pytest.raises(ValueError, match=r"--tfds_eval_splits 'validation' must be NAME=VALUE.*e\.g\. val=validation"):
        datasets.DataConfig(tfds_eval_splits=["validation"])
    with pytest.raises(ValueError, match=r"--tfds_eval_splits gives eval set 'val' twice"):
        datasets.DataConfig(tfds_eval_splits=["val=validation", "val=test"])
    with pytest.raises(ValueError, match=r"--tfds_eval_pp names eval set 'vall', which --tfds_eval_splits does not define \(val\); did you mean 'val'\?"):
        datasets.DataConfig(tfds_eval_splits=["val=validation"], tfds_eval_pp=["vall=decode"])
    with pytest.raises(ValueError, match=r"--tfds_eval_datasets names eval set 'v2'.*add v2=SPLIT to --tfds_eval_splits"):
        datasets.DataConfig(tfds_eval_datasets=["v2=imagenet_v2"])
    with pytest.raises(ValueError, match=r"--data_set h5ad evaluates its own held-out data"):
        datasets.DataConfig(data_set="h5ad", tfds_eval_splits=["val=validation"])


def test_eval_sets_fail_at_start_up_on_a_bad_split_or_too_many_classes(eval_dir):
    with pytest.raises(ValueError, match=r"bad split 'tset'"):
        datasets.build_data(datasets.DataConfig(data_set="digits", tfds_data_dir=eval_dir, tfds_eval_splits=["val=tset"]))
    with pytest.raises(ValueError, match=r"eval set 'wide': tiny_wide/1.0.0 has 12 classes but the model head has 10; pass --num_classes 12"):
        datasets.build_data(
            datasets.DataConfig(data_set="digits", tfds_data_dir=eval_dir, tfds_eval_splits=["wide=test"], tfds_eval_datasets=["wide=tiny_wide"])
        )


def test_recipe_gives_eval_sets_as_a_yaml_list(tmp_path):
    recipe = tmp_path / "evals.yaml"
    recipe.write_text('tfds_eval_splits:\n  - minival=train[99%:]\n  - val=validation\ntfds_eval_pp:\n  - val=decode|keep("image", "label")\n')
    s = config.parse_settings(["--config", str(recipe)])
    specs = s.data.get_eval_specs()
    assert specs == {"minival": datasets.EvalSpec("train[99%:]"), "val": datasets.EvalSpec("validation", None, 'decode|keep("image", "label")')}
    assert s.flags["tfds_eval_splits"] == ["minival=train[99%:]", "val=validation"], "args.yaml reruns the same eval sets"


def test_main_reports_each_eval_set_apart(eval_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["--device", "cpu", "--tfds_data_dir", eval_dir, "--output_dir", str(out), "--model", "tiny_cnn", "--batch_size", "64", "--eval_batch_size", "48"]
    argv += ["--epochs", "2", "--max_steps_per_epoch", "3", "--eval_every_epochs", "1", "--log_every", "3"]
    argv += ["--tfds_eval_splits", "test=test", "part=train[:100]", "v2=test", "--tfds_eval_datasets", "v2=tiny_digits_v2"]
    argv += ["--tfds_eval_pp", 'part=decode|resize(32)|value_range(-1, 1)|flip_lr|keep("image", "label")']
    summary = main.main(argv)
    assert {k: summary[k] for k in ("test/n_examples", "part/n_examples", "v2/n_examples")} == {
        "test/n_examples": 360,
        "part/n_examples": 100,
        "v2/n_examples": 37,
    }
    assert "acc1" not in summary and all(0 <= summary[f"{n}/acc1"] <= 100 for n in ("test", "part", "v2"))

    evals = [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if any(k.startswith("eval/") for k in x)]
    assert len(evals) == 2, "one eval line per epoch"
    assert {k for k in evals[-1] if k.endswith("/acc1")} == {"eval/test/acc1", "eval/part/acc1", "eval/v2/acc1"}
    assert evals[-1]["eval/v2/n_examples"] == 37 and evals[-1]["eval/part/acc1"] == pytest.approx(summary["part/acc1"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"eval/test/acc1", "eval/part/acc1", "eval/v2/acc1", "eval/v2/acc5"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/v2/acc1")[-1].value == pytest.approx(summary["v2/acc1"], abs=1e-3)

    best = ckpt.load_file(ckpt.list_checkpoints(str(out))[-1][1])["best"]
    assert set(best) == {f"{n}/{m}" for n in ("test", "part", "v2") for m in ("acc1", "acc5")}, "best values name their eval set"
    assert best["v2/acc1"] == max(e["eval/v2/acc1"] for e in evals)
