"""Logger backends, host/device stats, MFU and profiler traces: read back from what one real run (plus its resumed continuation) wrote."""

import csv
import glob
import gzip
import json
import logging
import os
import struct
import sys

import pytest
import torch

import main
from tests import proc
from utils import devstats, flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _argv(digits_dir: str, out, epochs: int, *extra: str) -> list[str]:
    return [
        "--device", "cpu", "--tfds_data_dir", digits_dir, "--output_dir", str(out), "--model", "tiny_cnn", "--batch_size", "64",
        "--epochs", str(epochs), "--max_steps_per_epoch", "4", "--log_every", "2", "--eval_every_epochs", "1", "--save_every_epochs", "1",
        "--wandb", "--wandb_mode", "offline", "--wandb_project", "tests", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_dpath(digits_dir, tmp_path_factory):
    """2 epochs with a profile of steps 2-3 and W&B offline, then the same run resumed to 3 epochs: one run for every assertion below."""
    out = tmp_path_factory.mktemp("obs") / "run"
    main.main(_argv(digits_dir, out, 2, "--profile_steps", "2:3"))
    main.main(_argv(digits_dir, out, 3, "--resume", "auto"))
    return out


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_jsonl_has_rates_host_stats_and_flops(run_dpath):
    train = [r for r in _records(run_dpath) if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12], "log points of 3 epochs of 4 steps, each step once although the run was resumed"
    last = train[-1]
    for key in ("train/examples_per_s", "perf/examples_per_s_per_device", "perf/data_wait_pct", "perf/model_tflops_per_device", "sys/cpu_pct"):
        assert key in last, (key, sorted(last))
    assert 0.0 <= last["perf/data_wait_pct"] <= 100.0
    assert 0.05 < last["sys/rss_gib"] < 64, last["sys/rss_gib"]
    assert "perf/mfu_pct" not in last, "a CPU has no peak in the table: no MFU"
    assert not any(k.startswith("dev/") for k in last), "no device memory stats on CPU"
    assert last["train/epoch"] == 3.0 and train[0]["train/epoch"] == 0.5


def test_tensorboard_events_hold_the_same_scalars(run_dpath):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dpath / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "eval/acc1", "sys/rss_gib", "perf/data_wait_pct"} <= set(tags), tags
    assert [e.step for e in events.Scalars("eval/acc1")] == [4, 8, 12]


def test_summary_csv_one_row_per_epoch_as_timm(run_dpath):
    with open(run_dpath / "summary.csv", newline="") as fd:
        reader = csv.DictReader(fd)
        rows = list(reader)
    assert reader.fieldnames[:2] == ["epoch", "step"] and reader.fieldnames[-1] == "lr", reader.fieldnames
    assert {"train_loss", "eval_acc1", "eval_loss"} <= set(reader.fieldnames)
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 4), (2, 8), (3, 12)], "the resumed run appended epoch 3 once, header kept"
    jsonl_acc = {r["step"]: r["eval/acc1"] for r in _records(run_dpath) if "eval/acc1" in r}
    assert [float(r["eval_acc1"]) for r in rows] == pytest.approx([jsonl_acc[4], jsonl_acc[8], jsonl_acc[12]])


def _wandb_records(fpath: str) -> list:
    """The records of an offline W&B run file: its leveldb-style log (7-byte file header, 32 KiB blocks of crc32 + length + type chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = open(fpath, "rb").read()
    assert data[:4] == b":W&B", data[:8]
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += block - pos % block
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_wandb_offline_resume_keeps_the_run_id_and_never_repeats_a_step(run_dpath):
    state = json.loads((run_dpath / "wandb_run.json").read_text())
    files = sorted(glob.glob(str(run_dpath / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2 and all(f.endswith(f"run-{state['id']}.wandb") for f in files), files
    steps, run_ids = [], set()
    for fpath in files:
        for record in _wandb_records(fpath):
            if record.WhichOneof("record_type") == "run":
                run_ids.add(record.run.run_id)
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                steps.append(items["trainer/step"])
                assert "train/loss" in items or "eval/acc1" in items or "xla/compiles" in items, items
    assert run_ids == {state["id"]}
    assert steps == sorted(set(steps)), f"each step once, increasing across the resume: {steps}"
    assert steps[-1] == 12 == state["last_step"]


def test_profile_trace_is_written_and_parses(run_dpath):
    traces = glob.glob(str(run_dpath / "tb" / "profile" / "*.pt.trace.json*"))
    assert len(traces) == 1, traces
    opener = gzip.open if traces[0].endswith(".gz") else open
    with opener(traces[0], "rt") as fd:
        trace = json.load(fd)
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= names, sorted(n for n in names if n and n.startswith("ProfilerStep"))
    assert any(n and n.startswith("aten::convolution") for n in names), "the CPU ops of the train step are in the trace"


@pytest.mark.timeout(300)
def test_xla_profiler_writes_an_xplane_that_parses(xla_device, tmp_path):
    import torch_xla

    from utils.profiling import StepProfiler

    prof = StepProfiler(1, 1, str(tmp_path), "xla", lambda: None)
    prof.before_step(1)
    x = torch.ones(64, 64, device=xla_device)
    (x @ x).sum()
    torch_xla.sync()
    prof.after_step(1)
    planes = glob.glob(str(tmp_path / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(planes) == 1, os.listdir(tmp_path)
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from utils.tf_import import tf  # noqa: F401  (torch_xla before TensorFlow, whose tsl protos parse the file)

    space = xplane_pb2.XSpace()
    space.ParseFromString(open(planes[0], "rb").read())
    assert space.planes and any(p.lines for p in space.planes), [p.name for p in space.planes]


def test_plot_tool_draws_one_and_two_runs(run_dpath, tmp_path):
    out = tmp_path / "ab.png"
    r = proc.run(
        [sys.executable, "-m", "tools.plot_metrics", str(run_dpath), str(run_dpath / "metrics.jsonl"), "--out", str(out), "--x", "epoch"], cwd=REPO, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    bad = proc.run([sys.executable, "-m", "tools.plot_metrics", str(tmp_path / "nope")], cwd=REPO, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: {str(tmp_path / 'nope')!r} has no metrics.jsonl; pass a run's --output_dir or its metrics.jsonl"
    ]


def _vit_hand_count(img: int, patch: int, dim: int, depth: int, n_classes: int) -> int:
    """Train-step FLOPs of one image through timm's ViT: 2 FLOPs per multiply-add, backward = 2 x forward except the patch embedding's input grad."""
    n_patches = (img // patch) ** 2
    n = n_patches + 1  # + class token
    patch_embed = 2 * n_patches * patch * patch * 3 * dim
    block = 2 * n * (3 * dim * dim + dim * dim + 8 * dim * dim) + 2 * 2 * n * n * dim  # qkv, proj, mlp (4x); q k^T and attn v
    forward = patch_embed + depth * block + 2 * dim * n_classes
    return 3 * forward - patch_embed


def test_flop_counter_matches_the_hand_count_of_a_vit():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10)
    batch = {"image": torch.zeros(2, 3, 64, 64), "label": torch.zeros(2, dtype=torch.long)}
    weights = [p.detach().clone() for p in model.parameters()]
    per_example = flops.count_flops_per_example(model, lambda m, b: torch.nn.functional.cross_entropy(m(b["image"]), b["label"]), batch)
    hand = _vit_hand_count(64, 16, 192, 12, 10)
    assert per_example == pytest.approx(hand, rel=0.02), (per_example, hand)
    assert all(torch.equal(w, p) and p.grad is None for w, p in zip(weights, model.parameters(), strict=True)), "counted on a meta copy"


def test_flops_scale_with_the_batch_and_mfu_formula():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.ReLU(), torch.nn.Linear(32, 4, bias=False))
    batch = {"x": torch.zeros(4, 16)}
    loss_fn = lambda m, b: m(b["x"]).sum()  # noqa: E731
    assert flops.count_flops_per_example(model, loss_fn, batch, n=2) == flops.count_flops_per_example(model, loss_fn, batch, n=4)
    # forward 2(16x32 + 32x4), weight grads the same, input grad of layer 2 only (the input needs none): 2x32x4
    assert flops.count_flops_per_example(model, loss_fn, batch) == 2 * (16 * 32 + 32 * 4) * 2 + 2 * 32 * 4
    stats = flops.MfuStats(flops_per_step=2e12, n_devices=4, peak_tflops=275.0)
    out = stats.read(10, steps_per_s=5.0)
    assert out["perf/model_tflops_per_device"] == pytest.approx(2.5) and out["perf/mfu_pct"] == pytest.approx(100 * 2.5 / 275)
    assert "perf/mfu_pct" not in flops.MfuStats(2e12, 4, None).read(10, 5.0)


@pytest.mark.parametrize(
    "kind, peak",
    [("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5", 459), ("TPU v5p", 459), ("TPU v6 lite", 918), ("NVIDIA A100-SXM4-80GB", 312)]
    + [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H200", 989), ("cpu", None), (None, None), ("TPU v3", None)],
)
def test_peak_table(kind, peak):
    assert flops.get_peak_tflops(kind) == peak


def test_device_stats_guards(xla_device, caplog):
    with caplog.at_level(logging.INFO, logger="utils.devstats"):
        spmd = devstats.DeviceStats("xla", xla_device, spmd=True)
        assert spmd.read(1, 1.0) == {} and spmd.read(2, 1.0) == {}
        pjrt_cpu = devstats.DeviceStats("xla", xla_device)
        assert pjrt_cpu.read(1, 1.0) == {} and pjrt_cpu.read(2, 1.0) == {}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "SPMD" in messages[0] and "UNIMPLEMENTED" in messages[1], messages
    assert devstats.DeviceStats("cpu", torch.device("cpu")).read(1, 1.0) == {}
    assert devstats.get_device_kind("xla", xla_device) is None, "PJRT CPU is no chip of the peak table"
