"""The torch runtimes' speed options (--compile, --channels_last, --tf32, --pin_memory, --opt_fused, --precision bf16 on cpu) and their checks.

On this CPU machine: a compiled run through main.py gives the eager run's losses, each option is an error where it cannot apply, channels-last
reaches the weights and the image batches only, the fused optimizer matches the unfused one and survives a resume across the setting, and the
background prefetcher keeps order, raises in order and stops on a break. The CUDA copy path runs only where a GPU is (skipped here).
"""

import copy
import json
import os
import re
import sys
import threading

import pytest
import torch
import torch._dynamo.utils

import main
import models
import optim_factory
from tests import proc
from utils import speed
from utils.device import Runtime, make_runtime

# Compiled vs eager float32: Inductor fuses kernels and reorders reductions (conv backward, BatchNorm statistics, the mean of the loss), so each
# step differs from eager at float32 rounding (measured: 2.4e-7 on a loss of 2.3, about 1e-7 relative, after 4 AdamW steps). 1e-4 relative is
# 1000x that, and still 10x below how far the loss moves from one step to the next here (checked below), so a compiled step that dropped the
# update, used another LR or lost a term of the loss fails.
LOSS_RTOL = 1e-4


def _argv(digits_dir: str, out_dpath, *extra: str) -> list[str]:
    return [
        "--tfds_data_dir",
        digits_dir,
        "--output_dir",
        str(out_dpath),
        "--device",
        "cpu",
        "--model",
        "small_cnn",
        "--model_kwargs",
        "{widths: [8]}",  # one conv stage: Inductor's compile time grows with the graph
        "--batch_size",
        "16",
        "--eval_batch_size",
        "120",
        "--epochs",
        "1",
        "--max_steps_per_epoch",
        "5",
        "--warmup_epochs",
        "0",
        "--lr",
        "0.01",
        "--log_every",
        "1",
        "--tfds_num_parallel_calls",
        "1",
        "--no-tensorboard",
        *extra,
    ]


def _losses(out_dpath) -> list[float]:
    rows = [json.loads(x) for x in (out_dpath / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.timeout(240)  # about 35 s on 2 idle cores: Inductor compiles the train forward+backward and the eval forward once each
def test_compiled_run_gives_the_eager_losses(digits_dir, tmp_path):
    eager = main.main(_argv(digits_dir, tmp_path / "eager"))
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = main.main(_argv(digits_dir, tmp_path / "compiled", "--compile"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs_before + 2, "--compile compiled no train and eval graphs"
    want, got = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(want) == len(got) == 5
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=LOSS_RTOL, atol=0)
    moves = [abs(a - b) for a, b in zip(want, want[1:], strict=False)]
    assert min(moves) > 10 * LOSS_RTOL * max(want), f"the losses barely move between steps ({moves}): the comparison would prove little"
    assert compiled["n_examples"] == eager["n_examples"] == 360
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=LOSS_RTOL)  # the compiled eval step too


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--compile", "--device", "xla"], "--compile does not apply to --device xla: on XLA every train and eval step is already traced and compiled"),
        (["--channels_last", "--device", "xla"], "--channels_last does not apply to --device xla: XLA chooses tensor layouts itself"),
        (["--tf32", "--device", "cpu"], "--tf32 does not apply to --device cpu"),
        (["--pin_memory", "--device", "cpu"], "--pin_memory does not apply to --device cpu: on cpu there is no host-to-device copy"),
        (["--pin_memory", "--device", "xla"], "--pin_memory does not apply to --device xla: MpDeviceLoader copies"),
        (["--opt_fused", "--opt", "lamb"], "--opt_fused selects torch's fused kernel, which --opt lamb does not have (adagrad, adam, adamw,"),
        (["--channels_last", "--data_set", "h5ad"], "--channels_last reorders [b, c, h, w] image batches; --data_set h5ad trains a set model"),
    ],
)
def test_an_option_that_cannot_apply_is_one_error_line(flags, message, capsys):
    assert main.cli(flags) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def test_the_options_are_off_by_default_and_in_the_runtime_description():
    s = main.parse_settings([])
    assert s.runtime.options == speed.SpeedOptions() and not s.optim.opt_fused
    runtime = make_runtime("cpu", options=speed.SpeedOptions(compile=True, channels_last=True))
    assert runtime.options.compile and "speed options: compile, channels_last" in runtime.describe()


def test_compile_on_cpu_without_a_cxx_compiler_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no g++, c++ or clang++
    with pytest.raises(ValueError, match="--compile on cpu needs a C\\+\\+ compiler"):
        make_runtime("cpu", options=speed.SpeedOptions(compile=True))


def test_channels_last_reorders_the_weights_and_image_batches_only():
    runtime = make_runtime("cpu", options=speed.SpeedOptions(channels_last=True))
    model = runtime.place_model(models.create_model("tiny_cnn", num_classes=10), image_shape=(3, 32, 32))
    conv = model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    batch = runtime.to_device({"image": torch.randn(4, 3, 8, 8), "label": torch.arange(4), "labels": torch.rand(4, 10)})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and not batch["image"].is_contiguous()
    assert batch["label"].is_contiguous() and batch["labels"].is_contiguous() and batch["label"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"--channels_last reorders \[b, c, h, w\] image batches, but this data has images of shape \(8, 8\)"):
        runtime.place_model(models.create_model("tiny_cnn", num_classes=10), image_shape=(8, 8))


def test_bf16_autocasts_on_cpu():
    """--precision bf16 on cpu used to run float32 without a word; now it autocasts there as on cuda and XLA."""
    runtime = Runtime(kind="cpu", device=torch.device("cpu"), precision="bf16")
    with runtime.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, n_steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("tiny_cnn", num_classes=10)


def test_fused_adamw_matches_unfused_and_keeps_its_kernel_across_a_resume():
    plain, fused = _model(), _model()
    opt_plain = optim_factory.make_optimizer(plain, "adamw", 1e-3, 0.05)
    opt_fused = optim_factory.make_optimizer(fused, "adamw", 1e-3, 0.05, fused=True)
    assert all(g["fused"] for g in opt_fused.param_groups) and not any(g["fused"] for g in opt_plain.param_groups)
    _train(plain, opt_plain, 3)
    _train(fused, opt_fused, 3)
    for (name, a), b in zip(plain.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # the same update, another order of float32 operations

    # An unfused run's checkpoint resumed with --opt_fused: torch would take fused=None from the saved groups; the fused kernel stays on.
    resumed = _model()
    resumed.load_state_dict(plain.state_dict())
    opt_resumed = optim_factory.make_optimizer(resumed, "adamw", 1e-3, 0.05, fused=True)
    optim_factory.load_optimizer_state(opt_resumed, copy.deepcopy(opt_plain.state_dict()))  # as from a file: no tensor shared
    assert all(g["fused"] for g in opt_resumed.param_groups)
    _train(resumed, opt_resumed, 1, seed=2)
    _train(plain, opt_plain, 1, seed=2)
    for (name, a), b in zip(plain.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_needs_a_device_with_the_kernel():
    with pytest.raises(ValueError, match="--opt_fused: torch's fused adamw kernel does not run on meta parameters"):
        optim_factory.make_optimizer(_model().to("meta"), "adamw", 1e-3, 0.05, fused=True)
    assert optim_factory.get_fused_optimizers() == ["adagrad", "adam", "adamw", "momentum", "nesterov", "sgd"]


def test_prefetch_keeps_order_raises_in_order_and_stops_on_break():
    assert list(speed.prefetch(range(10), lambda i: i * i)) == [i * i for i in range(10)]

    def failing():
        yield 1
        yield 2
        raise OSError("corrupt record 3")

    got = []
    with pytest.raises(OSError, match="corrupt record 3"):
        for v in speed.prefetch(failing(), lambda i: i):
            got.append(v)
    assert got == [1, 2]

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    for v in speed.prefetch(endless(), lambda i: i, depth=2):
        if v == 3:
            break
    assert closed.wait(5), "the source was not closed after the consumer's break"
    assert not [t for t in threading.enumerate() if t.name == "prefetch"], "the prefetch thread outlived the consumer's break"


@pytest.mark.timeout(180)
def test_the_step_benchmark_prints_both_loops_and_their_ratio():
    """`python -m tools.bench_step` as a user runs it, tiny: its figures are the README's, its flags reach the engine's runtime."""
    argv = ["--model", "tiny_cnn", "--img_size", "16", "--batch_size", "8", "--steps", "3", "--rounds", "2", "--opt_fused", "--channels_last"]
    repo_dpath = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = proc.run([sys.executable, "-m", "tools.bench_step", *argv], cwd=repo_dpath, env={**os.environ, "PJRT_DEVICE": "CPU"}, timeout=150)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "speed options: channels_last" in r.stdout and "speed options: channels_last, opt_fused" in r.stdout, r.stdout
    assert re.search(r"engine +median +[\d.]+ ms/step", r.stdout) and re.search(r"minimal +median +[\d.]+ ms/step", r.stdout), r.stdout
    assert re.search(r"engine / minimal step time \(cpu\) : [\d.]+x", r.stdout), r.stdout
    bad = proc.run([sys.executable, "-m", "tools.bench_step", "--loops", "timm"], cwd=repo_dpath, timeout=60)
    assert bad.returncode == 2 and "use --device cuda" in bad.stderr


@pytest.mark.timeout(240)
def test_the_input_pipeline_benchmark_prints_ratios_and_both_limits(tmp_path):
    """`python -m tools.bench_input_pipeline`, tiny: ours against timm's loader and the two limits; the resize limit really resizes."""
    argv = ["--n_images", "48", "--batch_size", "16", "--n_batches", "2", "--warmup_batches", "1", "--timm_workers", "0", "--rounds", "1"]
    argv += ["--ceiling_seconds", "1", "--work_dir", str(tmp_path)]
    repo_dpath = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = proc.run([sys.executable, "-m", "tools.bench_input_pipeline", *argv], cwd=repo_dpath, env={**os.environ, "PJRT_DEVICE": "CPU"}, timeout=200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.search(r"ours default: [\d.]+ images/s vs timm workers=0: [\d.]+ images/s: ratio [\d.]+x", r.stdout), r.stdout
    cpu_ms = {k: float(v) for k, v in re.findall(r"^  (decode_and_crop_jpeg.*?all cores) +[\d.]+ +([\d.]+)$", r.stdout, re.M)}
    decode, decode_resize = cpu_ms["decode_and_crop_jpeg, tf.data all cores"], cpu_ms["decode_and_crop_jpeg + resize, tf.data all cores"]
    # The resize limit costs more CPU per image (TF skips a resize whose output is unused); CPU time, not the rate, which other jobs move.
    assert decode_resize > decode, r.stdout
    assert re.search(r"ours default runs at \d+% of decode_and_crop_jpeg \+ resize to 224", r.stdout), r.stdout
    bad = proc.run([sys.executable, "-m", "tools.bench_input_pipeline", "--variants", "fast"], cwd=repo_dpath, timeout=60)
    assert bad.returncode == 2 and "unknown --variants fast; known: default" in bad.stderr, bad.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pinned_cuda_batches_arrive_in_order_and_channels_last():
    host = [{"image": torch.full((2, 3, 4, 4), float(i)), "label": torch.full((2,), i)} for i in range(5)]
    got = list(speed.cuda_batches(iter(host), torch.device("cuda", 0), channels_last=True))
    assert [int(b["label"][0]) for b in got] == list(range(5))
    assert all(b["image"].is_cuda and b["image"].is_contiguous(memory_format=torch.channels_last) for b in got)
    assert all(float(b["image"].mean()) == i for i, b in enumerate(got))
