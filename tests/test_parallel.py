"""Data parallel runtimes agree with one device at the same global batch.

- SPMD data parallel and FSDPv2 on 4 virtual PJRT CPU devices (CPU_NUM_DEVICES=4, one process): per-step losses equal the single-device run, FSDPv2's checkpoint
  loads into a plain model.
- torchrun + DDP with 2 CPU processes (gloo) equals 1 process.
Each run is a fresh subprocess: SPMD and the device count are fixed per process.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import models
from tests import proc
from utils import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-4  # float32 reductions run in a different order when sharded


def _run(cmd: list[str], env_extra: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PJRT_DEVICE": "CPU", **env_extra}
    r = proc.run(cmd, cwd=REPO, env=env, timeout=timeout_s)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _assert_same_weights(got: dict, want: dict, lr: float) -> None:
    """Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise can flip its sign and move that one weight by up to ~lr,
    so the bulk is compared tightly and the worst element against the LR."""
    for k, v in want.items():
        diff = (got[k].double() - v.double()).abs()
        assert diff.mean() < 5e-6 and diff.max() <= lr, (
            k,
            diff.mean().item(),
            diff.max().item(),
        )  # BatchNorm running stats sum batch means in another order per shard: ~1e-6 on average after 4 steps


def _losses(out_dpath) -> list[float]:
    rows = [json.loads(x) for x in open(os.path.join(out_dpath, "metrics.jsonl"))]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.slow
@pytest.mark.xla
@pytest.mark.timeout(600)  # three XLA runs, about 25 s each on 2 cores
def test_spmd_and_fsdp_match_one_device(digits_dir, tmp_path):
    common = [
        sys.executable,
        "main.py",
        "--device",
        "xla",
        "--model",
        "tiny_cnn",
        "--epochs",
        "1",
        "--max_steps_per_epoch",
        "4",
        "--log_every",
        "1",
        "--batch_size",
        "32",
        "--tfds_data_dir",
        digits_dir,
    ]
    runs = {"none": {}, "spmd": {"CPU_NUM_DEVICES": "4"}, "fsdp": {"CPU_NUM_DEVICES": "4"}}
    results = {}
    for parallel, env in runs.items():
        out = tmp_path / parallel
        r = _run([*common, "--parallel", parallel, "--output_dir", str(out)], env, timeout_s=180)
        if parallel != "none":
            assert "4 device(s) for the global batch" in r.stdout and "8 per device" in r.stdout
        results[parallel] = (_losses(out), ckpt.list_checkpoints(str(out))[0][1])
    base_losses, base_fpath = results["none"]
    assert len(base_losses) == 4
    for parallel in ("spmd", "fsdp"):
        assert results[parallel][0] == pytest.approx(base_losses, rel=RTOL), parallel
    # FSDPv2 checkpoint -> a plain model, same weights as the single-device run.
    plain = models.create_model("tiny_cnn", num_classes=10)
    ckpt.load_model_weights(plain, results["fsdp"][1])
    base = ckpt.load_file(base_fpath)["model"]
    _assert_same_weights(plain.state_dict(), base, lr=4 * 1e-3)  # 4 steps at lr 1e-3: a flipped-sign Adam update can move one weight by up to lr per step


@pytest.mark.slow
def test_torchrun_ddp_two_processes_match_one(tmp_path):
    results = {}
    for n in (1, 2):
        out = tmp_path / f"ddp{n}.pt"
        # A run that hangs at exit (tools/stress_ddp_teardown.py counts them) fails here in 2 minutes with its output, and takes its workers with it.
        _run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "tests.ddp_worker", str(out)],
            {"OMP_NUM_THREADS": "1"},
            timeout_s=120,
        )
        results[n] = torch.load(out, weights_only=True)
    assert results[2]["world_size"] == 2
    assert results[2]["losses"] == pytest.approx(results[1]["losses"], rel=1e-5)
    _assert_same_weights(results[2]["model"], results[1]["model"], lr=1e-2)


@pytest.mark.slow
def test_cellset_eval_over_two_processes_covers_every_held_out_group_once(tmp_path):
    """Two torchrun processes each evaluate half of the held-out sets; the gathered metrics equal one process's, over every group exactly once."""
    from cells import simulate

    h5ad_fpath = simulate.simulate_h5ad(str(tmp_path / "cells.h5ad"), n_cells=1200, n_genes=24, n_perts=10, n_contexts=2, seed=3)
    results = {}
    for n in (1, 2):
        out = tmp_path / f"eval{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "tests.cellset_eval_worker", h5ad_fpath, str(out)]
        _run(cmd, {"OMP_NUM_THREADS": "1"}, timeout_s=180)
        results[n] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert two["world_size"] == 2
    keys = [tuple(k) for k in two["keys"]]
    assert len(keys) == one["n_eval_groups"] == len(set(keys)), "every held-out group exactly once"
    assert sorted(keys) == sorted(tuple(k) for k in one["keys"])
    assert two["metrics"]["n_examples"] == one["n_eval_groups"]
    assert two["metrics"]["n_perts_eval"] == one["metrics"]["n_perts_eval"] > 0
    for name in ("set_loss", "mae", "pds", "des", "baseline_ctrl_mae", "baseline_pert_pds", "score_mae"):
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5, abs=1e-7), name
