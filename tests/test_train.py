"""End to end through main.py on the embedded digits data: CPU eager and the XLA (PJRT CPU) device."""

import json
import logging
import os
import re

import pytest
import torch

import main
from utils import checkpoint as ckpt


def _args(digits_dir, out_dir, *extra):
    return ["--tfds_data_dir", digits_dir, "--output_dir", str(out_dir), "--model", "tiny_cnn", "--batch_size", "64", "--log_every", "5", *extra]


def test_cpu_run_writes_checkpoints_logs_and_learns(digits_dir, tmp_path):
    out = tmp_path / "run"
    summary = main.main(_args(digits_dir, out, "--device", "cpu", "--model", "small_cnn", "--epochs", "3", "--eval_every_epochs", "1"))
    assert summary["acc1"] > 80.0, summary
    assert summary["n_examples"] == 360
    assert summary["steps"] == 3 * (1437 // 64)
    assert (out / "args.yaml").is_file()
    steps = [s for s, _ in ckpt.list_checkpoints(str(out))]
    assert steps == [summary["steps"]], "one checkpoint at the end (save_every_epochs=5 > 3 epochs)"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in x for x in lines) and any("eval/acc1" in x for x in lines)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/acc1", "train/examples_per_s"} <= tags
    assert events.Scalars("eval/acc1")[-1].value == pytest.approx(summary["acc1"], abs=1e-3)

    # The saved weights load into a plain timm-style model by state_dict name.
    import models

    model = models.create_model("small_cnn", num_classes=10)
    ckpt.load_model_weights(model, ckpt.list_checkpoints(str(out))[0][1])


def test_resume_mid_epoch_gives_identical_weights(digits_dir, tmp_path):
    common = ["--device", "cpu", "--epochs", "2", "--save_every_steps", "7", "--keep_last", "10", "--tfds_num_parallel_calls", "1"]
    full = tmp_path / "full"
    main.main(_args(digits_dir, full, *common))
    final = ckpt.load_file(ckpt.list_checkpoints(str(full))[0][1])["model"]

    # Copy the mid-epoch checkpoint at step 28 (epoch 2, step 6 of 22) into a fresh dir and resume from it.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.link(ckpt.get_checkpoint_fpath(str(full), 28), ckpt.get_checkpoint_fpath(str(resumed), 28))
    summary = main.main(_args(digits_dir, resumed, *common, "--resume", "auto"))
    assert summary["steps"] == 44
    again = ckpt.load_file(ckpt.list_checkpoints(str(resumed))[0][1])["model"]
    for k in final:
        torch.testing.assert_close(again[k], final[k], rtol=0, atol=0, msg=k)


@pytest.mark.xla
def test_xla_run_reports_compiles_and_does_not_recompile(digits_dir, tmp_path, xla_device, caplog):
    """3 epochs on PJRT CPU; the eval split (360) does not divide the eval batch (64): still no new compiles after epoch 1."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "xla"
    summary = main.main(
        _args(digits_dir, out, "--device", "xla", "--epochs", "3", "--max_steps_per_epoch", "4", "--eval_every_epochs", "1", "--log_every", "2")
    )
    counts = [int(m.group(1)) for r in caplog.records if (m := re.search(r"xla: (\d+) graphs compiled so far", r.getMessage()))]
    assert len(counts) == 3, counts
    assert counts[0] == counts[2], f"recompiled after warm-up: {counts}"
    assert summary["compiles"] == counts[2]
    assert not [r for r in caplog.records if "new compiles" in r.getMessage()]
    assert summary["n_examples"] == 360
    assert ckpt.list_checkpoints(str(out)), "checkpoint written from the XLA device"
