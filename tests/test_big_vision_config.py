"""big_vision config files as they are (`--config FILE.py[:ARG]`): the mapping onto our flags, the fields it refuses, and a smoke
run of a config written the way big_vision's configs/vit_i1k.py is (sigmoid_xent, init_head_bias, warm-up steps, several evals on
other datasets, few-shot, bfloat16 Adam moments)."""

import glob
import math
import os
import textwrap

import numpy as np
import pytest
import torch

import config
from big_vision.configs import common as bvcc
from tests.test_recipes import run_smoke

VIT_CONFIG = """
import big_vision.configs.common as bvcc
from big_vision.configs.common_fewshot import get_fewshot_lsr
import ml_collections as mlc


def get_config(arg=None):
    arg = bvcc.parse_arg(arg, variant="B/16", runlocal=False, aug="")
    config = mlc.ConfigDict()
    config.seed = 3
    config.total_epochs = 90
    config.num_classes = 1000
    config.loss = "sigmoid_xent"
    config.init_head_bias = -6.9
    config.input = dict()
    config.input.data = dict(name="imagenet2012", split="train[:99%]")
    config.input.batch_size = 4096
    config.input.cache_raw = not arg.runlocal
    config.input.shuffle_buffer_size = 250_000
    common = '|value_range(-1, 1)|onehot(1000, key="{lbl}", key_result="labels")|keep("image", "labels")'
    config.input.pp = "decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,15)" + common.format(lbl="label")
    pp_eval = "decode|resize_small(256)|central_crop(224)" + common
    config.pp_modules = ["ops_general", "ops_image", "archive.randaug"]
    config.prefetch_to_device = 4
    config.log_training_steps = 50
    config.ckpt_steps = 1000
    config.model_name = "vit"
    config.model = dict(variant=arg.variant, pool_type="gap", rep_size=False)
    config.grad_clip_norm = 1.0
    config.optax_name = "scale_by_adam"
    config.optax = dict(mu_dtype="bfloat16")
    config.lr = 0.001
    config.wd = 0.0001
    config.schedule = dict(warmup_steps=10_000, decay_type="cosine")
    config.mixup = dict(p=0.5, fold_in=None)

    def get_eval(split, dataset="imagenet2012"):
        return dict(type="classification", data=dict(name=dataset, split=split), pp_fn=pp_eval.format(lbl="label"),
                    loss_name=config.loss, log_steps=2500, cache="final_data")

    config.evals = {}
    config.evals.minival = get_eval("train[99%:]")
    config.evals.val = get_eval("validation")
    config.evals.v2 = get_eval("test", dataset="imagenet_v2")
    config.evals.real = get_eval("validation", dataset="imagenet2012_real")
    config.evals.real.pp_fn = pp_eval.format(lbl="real_label")
    config.fewshot = get_fewshot_lsr(runlocal=arg.runlocal)
    return config
"""


@pytest.fixture(scope="module")
def vit_config(tmp_path_factory) -> str:
    fpath = tmp_path_factory.mktemp("bv") / "vit_i1k.py"
    fpath.write_text(textwrap.dedent(VIT_CONFIG))
    return str(fpath)


def parse(*argv: str) -> dict:
    return vars(config.parse_args(list(argv)))


def test_a_vit_config_maps_setting_by_setting(vit_config) -> None:
    a = parse("--config", f"{vit_config}:variant=S/16", "--config_ignore", "fewshot")
    assert a["model"] == "vit_small_patch16_224" and a["model_kwargs"] == {"weight_init": "jax", "global_pool": "avg", "class_token": False, "fc_norm": False}
    assert (a["seed"], a["epochs"], a["num_classes"], a["loss"], a["head_init_bias"]) == (3, 90, 1000, "sigmoid_xent", -6.9)
    assert (a["tfds_name"], a["tfds_train_split"], a["batch_size"], a["tfds_cache_raw"], a["tfds_shuffle_buffer"]) == (
        "imagenet2012",
        "train[:99%]",
        4096,
        True,
        250_000,
    )
    assert (a["opt"], a["lr"], a["weight_decay"], a["wd_semantics"], a["clip_grad"]) == ("adamw", 0.001, 0.0001, "big_vision", 1.0)
    assert (a["sched"], a["warmup_steps"], a["warmup_epochs"], a["warmup_lr"], a["min_lr"]) == ("cosine", 10_000, None, 0.0, 0.0)
    assert (a["mixup"], a["mixup_mode"], a["log_every"], a["save_every_steps"]) == (0.5, "batch", 50, 1000)
    assert sorted(a["tfds_eval_splits"]) == ["minival=train[99%:]", "real=validation", "v2=test", "val=validation"]
    assert sorted(a["tfds_eval_datasets"]) == ["real=imagenet2012_real", "v2=imagenet_v2"]
    assert any(pp.startswith("real=") and 'key="real_label"' in pp for pp in a["tfds_eval_pp"])
    assert a["big_vision_pp_train"].startswith("decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,15)")


def test_unsupported_fields_are_listed_in_one_line(vit_config, tmp_path, capsys) -> None:
    src = open(vit_config).read().replace("rep_size=False", 'rep_size=True, posemb="sincos2d"').replace('"scale_by_adam"', '"big_vision.lion"')
    fpath = tmp_path / "bad.py"
    fpath.write_text(src)
    with pytest.raises(SystemExit) as e:
        parse("--config", str(fpath))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    for part in (
        "5 field(s)",
        "optax.mu_dtype=",
        "model.rep_size=True",
        "model.posemb='sincos2d'",
        "optax_name='big_vision.lion'",
        "fewshot (",
        "--config_ignore",
    ):
        assert part in err, (part, err)


def test_config_ignore_names_a_missing_field_with_its_close_match(vit_config, capsys) -> None:
    with pytest.raises(SystemExit):
        parse("--config", vit_config, "--config_ignore", "fewshots")
    assert "--config_ignore 'fewshots': the config has no such field; did you mean 'fewshot." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--config", os.path.join(config.__file__.rsplit(os.sep, 1)[0], "train", "recipes", "kd_digits_teacher.yaml"), "--config_ignore", "x")


def test_parse_arg_follows_big_vision() -> None:
    assert dict(bvcc.parse_arg("S/16", variant="B/16", runlocal=False)) == {"variant": "S/16", "runlocal": False}
    assert dict(bvcc.parse_arg("runlocal", variant="B/16", runlocal=False)) == {"variant": "B/16", "runlocal": True}
    assert dict(bvcc.parse_arg("res=128,runlocal=false", res=224, runlocal=True)) == {"res": 128, "runlocal": False}
    assert dict(bvcc.parse_arg("x=1.5,y=a", lazy=True)) == {"x": 1.5, "y": "a"}
    with pytest.raises(ValueError, match="not options of this config"):
        bvcc.parse_arg("depth=3", variant="B/16")


def test_sigmoid_xent_is_big_visions_sum_over_classes() -> None:
    from tasks.classification import classification_sums, sigmoid_xent

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([0, 1])
    p = 1 / (1 + np.exp(-logits.numpy()))
    y = np.eye(3)[labels.numpy()]
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
    np.testing.assert_allclose(sigmoid_xent(logits, labels).numpy(), expected, rtol=1e-6)
    # Multi-hot labels (ImageNet ReaL): a top-1 hit is any labelled class; a row without labels is left out (big_vision's evaluator), as is padding.
    multi = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[0.1, 0.2, 0.9], [0.0, 1.0, 0.5], [0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
    sums = classification_sums(logits, multi, torch.tensor([True, True, True, False]), "sigmoid_xent")
    assert (sums["correct1"].item(), sums["count"].item()) == (1.0, 2.0)
    assert sums["loss_sum"].item() == pytest.approx((sigmoid_xent(logits[[0]], multi[[0]]) + sigmoid_xent(logits[[2]], multi[[2]])).item(), rel=1e-6)


def test_linear_schedule_and_warmup_steps_match_big_visions_formula() -> None:
    from optim_factory import OptimConfig

    cfg = OptimConfig(epochs=10, lr=0.001, min_lr=1e-8, warmup_steps=100, warmup_epochs=None, warmup_lr=0.0, sched="linear")
    sched = cfg.make_schedule(steps_per_epoch=100)
    for step in (100, 400, 999):  # upstream: end + (lr - end) * (1 - progress), progress = (step - warmup) / (total - warmup)
        assert math.isclose(sched.lr_at(step), 1e-8 + (0.001 - 1e-8) * (1 - (step - 100) / 900), rel_tol=1e-9)
    assert sched.lr_at(49) == pytest.approx(0.001 * 50 / 100)
    with pytest.raises(ValueError, match="--warmup_steps 2000 >= the run's 1000 steps"):
        OptimConfig(epochs=10, warmup_steps=2000).make_schedule(steps_per_epoch=100)
    with pytest.raises(ValueError, match="both set the warm-up"):
        OptimConfig(epochs=10, warmup_steps=20, warmup_epochs=1.0)


def test_mixup_mixes_one_hot_labels_as_int_labels() -> None:
    from big_vision.mixup import MixupConfig, make_mixup

    mixup = make_mixup(MixupConfig(mixup=0.5), num_classes=4, batch_per_process=4)
    x, label = torch.randn(4, 3, 8, 8), torch.tensor([0, 3, 1, 2])
    x_int, y_int = mixup(x, label, np.random.RandomState(0))
    x_hot, y_hot = mixup(x, torch.nn.functional.one_hot(label, 4).float(), np.random.RandomState(0))
    assert torch.equal(x_int, x_hot) and torch.equal(y_int, y_hot)


@pytest.mark.timeout(600)
def test_a_big_vision_config_file_runs_in_smoke_mode(vit_config, tmp_path) -> None:
    out = tmp_path / "out"
    log, resolved = run_smoke(f"{vit_config}:variant=S/16", str(out), str(tmp_path / "tfds"), "--config_ignore", "fewshot")
    assert "approximated: optax.mu_dtype" in log and "final: " in log
    # The evals of the train dataset run on the embedded photos, each reported apart; those of other datasets are left out.
    assert "minival/acc1" in log and "val/acc1" in log and "v2/" not in log
    assert (resolved["loss"], resolved["head_init_bias"], resolved["model"]) == ("sigmoid_xent", -6.9, "test_vit")
    assert glob.glob(str(out / "checkpoint-*.pt"))
