"""Mixup/CutMix on host batches: soft targets, fixed shapes, timm's draws, exact smoothing in the loss, wiring through main.py."""

import logging
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main
from big_vision import mixup as mixup_lib

N_CLASSES = 5
B = 8

# (mixup_alpha, cutmix_alpha, cutmix_minmax, prob): mixup only, cutmix only, both (switching), box range, sometimes no mixing at all.
CONFIGS = [(0.8, 0.0, None, 1.0), (0.0, 1.0, None, 1.0), (0.8, 1.0, None, 1.0), (0.0, 0.0, (0.2, 0.8), 1.0), (0.8, 1.0, None, 0.5)]


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # NCHW view of NHWC memory, as iterate_torch hands it over.
    image = torch.rand(B, 16, 12, 3, generator=g).permute(0, 3, 1, 2)
    return {"image": image, "label": torch.tensor([0, 1, 2, 3, 4, 0, 1, 1], dtype=torch.int64)}


@pytest.mark.parametrize("mode", mixup_lib.MODES)
@pytest.mark.parametrize("config", CONFIGS)
def test_soft_targets_sum_to_one_with_fixed_shapes(mode, config):
    mixup = mixup_lib.Mixup(N_CLASSES, *config, mode=mode)
    batch = _batch()
    before = batch["image"].clone()
    shapes = set()
    for out in mixup_lib.mix_batches(iter([batch] * 12), mixup, seed=0, epoch=0):
        assert set(out) == {"image", "labels"}, "the int label is replaced by the soft targets"
        shapes.add((tuple(out["image"].shape), out["image"].dtype, tuple(out["labels"].shape), out["labels"].dtype))
        torch.testing.assert_close(out["labels"].sum(1), torch.ones(B), rtol=0, atol=1e-6)
        assert (out["labels"] >= 0).all()
    assert shapes == {((B, 3, 16, 12), torch.float32, (B, N_CLASSES), torch.float32)}, "one shape and dtype whatever was drawn: one XLA graph"
    assert torch.equal(batch["image"], before), "the input batch (tf.data's buffer) is never written to"


@pytest.mark.parametrize("mode", mixup_lib.MODES)
@pytest.mark.parametrize("config", CONFIGS)
def test_same_draws_and_outputs_as_timm(mode, config):
    import timm.data

    batch = _batch(1)
    for seed in range(6):
        x, labels = mixup_lib.Mixup(N_CLASSES, *config, mode=mode)(batch["image"], batch["label"], np.random.RandomState(seed))
        np.random.seed(seed)
        mixup_alpha, cutmix_alpha, minmax, prob = config
        timm_mixup = timm.data.Mixup(mixup_alpha, cutmix_alpha, minmax, prob, mode=mode, label_smoothing=0.0, num_classes=N_CLASSES)
        timm_x, timm_labels = timm_mixup(batch["image"].clone(), batch["label"])
        torch.testing.assert_close(x, timm_x, rtol=0, atol=0)
        torch.testing.assert_close(labels, timm_labels, rtol=0, atol=0)


def test_batch_mixup_values_and_exact_label_smoothing():
    batch = _batch(2)
    mixup = mixup_lib.Mixup(N_CLASSES, mixup_alpha=1.0)
    rng = np.random.RandomState(3)
    x, labels = mixup(batch["image"], batch["label"], rng)
    lam = float(labels[0, 0])  # row 0: class 0 mixed with row 7's class 1
    assert 0 < lam < 1 and float(labels[0, 1]) == pytest.approx(1 - lam, abs=1e-7)
    torch.testing.assert_close(x[0], lam * batch["image"][0] + (1 - lam) * batch["image"][7])

    # Smoothing happens once, in the loss: targets (1 - s) * labels + s / n_classes, i.e. timm's mixup_target(..., smoothing=s).
    import timm.data

    s = 0.1
    rng = np.random.RandomState(3)
    np.random.seed(3)
    timm_smoothed = timm.data.Mixup(1.0, 0.0, label_smoothing=s, num_classes=N_CLASSES)(batch["image"].clone(), batch["label"])[1]
    torch.testing.assert_close(timm_smoothed, (1 - s) * labels + s / N_CLASSES)
    assert float(timm_smoothed[0, 0]) == pytest.approx((1 - s) * lam + s / N_CLASSES, abs=1e-7)
    assert float(timm_smoothed[0, 2]) == pytest.approx(s / N_CLASSES, abs=1e-7)


def test_cutmix_box_pastes_the_flipped_batch_and_lam_is_the_kept_area():
    batch = _batch(4)
    x, labels = mixup_lib.Mixup(N_CLASSES, cutmix_alpha=1.0)(batch["image"], batch["label"], np.random.RandomState(5))
    pasted = (x != batch["image"]).any(dim=1)[0]  # [h, w] of row 0: where row 7's pixels came in
    area = pasted.float().mean().item()
    assert 0 < area < 1
    ys, xs = pasted.nonzero(as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    torch.testing.assert_close(x[0, :, y0:y1, x0:x1], batch["image"][7, :, y0:y1, x0:x1], rtol=0, atol=0)
    assert float(labels[0, 0]) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (16 * 12), abs=1e-6), "lambda = 1 - box area / image area"


def test_resume_redraws_the_same_mixes():
    mixup = mixup_lib.Mixup(N_CLASSES, 0.8, 1.0, mode="elem")
    batches = [_batch(i) for i in range(6)]
    full = list(mixup_lib.mix_batches(iter(batches), mixup, seed=7, epoch=3))
    resumed = list(mixup_lib.mix_batches(iter(batches[4:]), mixup, seed=7, epoch=3, start_step=4))
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    other_epoch = next(mixup_lib.mix_batches(iter(batches), mixup, seed=7, epoch=4))
    assert not torch.equal(other_epoch["labels"], full[0]["labels"]), "each epoch draws new mixes"


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_loss_equals_the_hand_formula(smoothing):
    from tasks.classification import ClassificationTask
    from utils.device import make_runtime

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 12, N_CLASSES))
    batch = mixup_lib.Mixup(N_CLASSES, 0.8, 1.0, mode="elem").mix(_batch(5), np.random.RandomState(0))
    task = ClassificationTask(make_runtime("cpu"), label_smoothing=smoothing)
    loss, _ = task.train_loss(model, batch)

    logits = model(batch["image"]).detach().double().numpy()
    log_p = logits - logits.max(1, keepdims=True) - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    targets = (1 - smoothing) * batch["labels"].double().numpy() + smoothing / N_CLASSES
    expected = -(targets * log_p).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)

    # Hard labels with smoothing: the same formula with one-hot targets.
    hard_loss, _ = task.train_loss(model, _batch(5))
    onehot = F.one_hot(_batch(5)["label"], N_CLASSES).double().numpy()
    logits = model(_batch(5)["image"]).detach().double().numpy()
    log_p = logits - logits.max(1, keepdims=True) - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    assert float(hard_loss.detach()) == pytest.approx(-(((1 - smoothing) * onehot + smoothing / N_CLASSES) * log_p).sum(1).mean(), rel=1e-5)


def _args(digits_dir: str, *extra: str) -> list[str]:
    return ["--tfds_data_dir", digits_dir, "--batch_size", "32", "--model", "tiny_cnn", *extra]


def test_train_batches_carry_soft_targets_when_enabled(digits_dir):
    import datasets

    data = datasets.build_data(main.parse_settings(_args(digits_dir, "--mixup", "0.8", "--cutmix", "1.0", "--mixup_mode", "pair")).data)
    for batch in [next(data.train_batches(0)), next(data.train_batches(1, start_step=3))]:
        assert set(batch) == {"image", "labels"}
        assert batch["image"].shape == (32, 3, 32, 32) and batch["labels"].shape == (32, 10) and batch["labels"].dtype == torch.float32
        torch.testing.assert_close(batch["labels"].sum(1), torch.ones(32), rtol=0, atol=1e-6)
    assert set(next(data.eval_batches())) == {"image", "label", "_mask"}, "eval batches are never mixed"
    plain = datasets.build_data(main.parse_settings(_args(digits_dir)).data)
    assert set(next(plain.train_batches(0))) == {"image", "label"}, "off by default"


def test_bad_mixup_settings_fail_at_start_up(digits_dir, capsys):
    import datasets

    for extra, message in [
        (["--mixup_prob", "1.5"], r"--mixup_prob must be in \[0, 1\], got 1.5"),
        (["--cutmix_minmax", "0.8", "0.2"], r"--cutmix_minmax needs 0 < MIN < MAX <= 1"),
        (["--mixup_mode", "elements"], r"--mixup_mode 'elements' is not one of batch, pair, elem; did you mean 'elem'"),
        (["--mixup", "-1"], r"--mixup \(an alpha\) must be >= 0"),
    ]:
        with pytest.raises(SystemExit):
            main.parse_args(_args(digits_dir, *extra))
        assert re.search(message, capsys.readouterr().err), extra
    with pytest.raises(ValueError, match="per-process batch size must be even, got 31"):
        datasets.build_data(main.parse_settings(_args(digits_dir, "--mixup", "0.8", "--batch_size", "31")).data)
    no_label_pp = 'decode|resize(32)|value_range(-1, 1)|keep("image")'
    with pytest.raises(ValueError, match="mix int class labels under 'label' or one-hot 'labels' of the head's 10 classes; .* gives image"):
        datasets.build_data(main.parse_settings(_args(digits_dir, "--mixup", "0.8", "--big_vision_pp_train", no_label_pp)).data)


def test_config_yaml_takes_the_minmax_list(digits_dir, tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("cutmix_minmax: [0.2, 0.8]\nmixup_prob: 0.5\n")
    args = main.parse_args(["--config", str(cfg), *_args(digits_dir)])
    assert args.cutmix_minmax == [0.2, 0.8] and args.mixup_prob == 0.5
    cfg.write_text("cutmix_minmax: [0.2]\n")
    with pytest.raises(SystemExit):
        main.parse_args(["--config", str(cfg), *_args(digits_dir)])


@pytest.mark.xla
def test_xla_train_with_mixup_and_cutmix_compiles_once(digits_dir, tmp_path, xla_device, caplog):
    """A new lambda and box every step, yet the train step compiles once: mixing happens on the host."""
    caplog.set_level(logging.INFO)
    extra = [
        "--device",
        "xla",
        "--epochs",
        "2",
        "--max_steps_per_epoch",
        "3",
        "--eval_every_epochs",
        "1",
        "--log_every",
        "1",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    summary = main.main(_args(digits_dir, "--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing", "0.1", *extra))
    counts = [int(m.group(1)) for r in caplog.records if (m := re.search(r"xla: (\d+) graphs compiled so far", r.getMessage()))]
    assert len(counts) == 2 and counts[0] == counts[1], f"recompiled after the first epoch: {counts}"
    assert summary["steps"] == 6 and np.isfinite(summary["loss"])
    assert any("train batches mixed on the host: Mixup(num_classes=10, mixup_alpha=0.8, cutmix_alpha=1.0" in r.getMessage() for r in caplog.records)
