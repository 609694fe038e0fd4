"""Benchmark: host time per train step on XLA with and without MpDeviceLoader overlap, and compiles over 3 epochs.

    PJRT_DEVICE=CPU python -m tools.bench_xla_loader [--model small_cnn] [--batch_size 64] [--epochs 3]

Both modes run the same compiled train step on the embedded digits data, in one process, after a warm-up epoch:
- sync: each host batch is copied to the device in the training thread (`tensor.to(device)`), then the step runs;
- overlap: `MpDeviceLoader` copies the next batches on a background thread while the device computes.
Printed per mode: wall time per step, the part of it the host spent waiting for the next device batch, and the ratio. Then a 3-epoch run
through main.py reports XLA graphs compiled after epoch 1 and after epoch 3 (0 new is the goal).
"""

import argparse
import os
import re
import time

from cli.help import ArgumentParser


def time_epochs(runtime, data, step_fn, overlap: bool, n_epochs: int) -> tuple[float, float]:
    """Seconds per step and seconds waiting for input per step, over `n_epochs` after one warm-up epoch."""
    wall = wait = 0.0
    n = 0
    for epoch in range(n_epochs + 1):
        host = data.train_batches(epoch, 0)
        batches = runtime.device_loader(host) if overlap else (runtime.to_device(b) for b in host)
        runtime.wait()
        t_epoch = time.perf_counter()
        t_wait = 0.0
        it = iter(batches)
        for _ in range(data.steps_per_epoch):
            t0 = time.perf_counter()
            batch = next(it)
            t_wait += time.perf_counter() - t0
            step_fn(batch)
            runtime.mark_step()
        runtime.wait()
        if epoch == 0:
            continue  # warm-up: compiles
        wall += time.perf_counter() - t_epoch
        wait += t_wait
        n += data.steps_per_epoch
    return wall / n, wait / n


def get_args() -> argparse.Namespace:
    p = ArgumentParser("python -m tools.bench_xla_loader", description=__doc__)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data_dir", default=None)
    return p.parse_args()


def get_data_flags(cli: argparse.Namespace) -> list[str]:
    return ["--tfds_data_dir", cli.data_dir] if cli.data_dir else []


def bench_overlap(cli: argparse.Namespace, runtime) -> None:
    """Time the same compiled train step with synchronous copies and with MpDeviceLoader overlap; print both."""
    import torch

    import datasets
    import engine
    import main as main_mod
    import models
    from optim_factory import make_optimizer
    from tasks.classification import ClassificationTask

    args = main_mod.parse_settings(["--model", cli.model, "--batch_size", str(cli.batch_size), "--device", "xla", "--parallel", "none"] + get_data_flags(cli))
    data = datasets.build_data(args.data)
    torch.manual_seed(0)
    model = models.create_model(cli.model, num_classes=10).to(runtime.device)
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05)
    task = ClassificationTask(runtime)
    state = {"nf": torch.zeros((), device=runtime.device)}

    def step(batch):
        _, state["nf"] = train_fn(batch, state["nf"])

    train_fn = runtime.compile(lambda batch, nf: engine.train_step(model, task, optimizer, runtime, 0.0, batch, nf), name="train_step")
    results = {mode: time_epochs(runtime, data, step, mode == "overlap", cli.epochs - 1) for mode in ("sync", "overlap")}
    print(f"model {cli.model}, batch {cli.batch_size}, {data.steps_per_epoch} steps/epoch, {cli.epochs - 1} timed epochs per mode after 1 warm-up epoch")
    for mode, (per_step, wait) in results.items():
        print(f"{mode:8s} host time per step {per_step * 1e3:7.1f} ms  (waiting for input {wait * 1e3:6.1f} ms)")
    print(f"overlap speed-up: {results['sync'][0] / results['overlap'][0]:.2f}x per step")


def count_compiles(cli: argparse.Namespace, runtime) -> None:
    """Compiles over a 3-epoch run with eval every epoch (eval split 360 does not divide the batch)."""
    import io
    import logging

    import main as main_mod

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("train").addHandler(handler)
    logging.getLogger("train").setLevel(logging.INFO)
    out_dpath = os.path.join("/tmp", f"bench_xla_loader_{os.getpid()}")
    main_mod.run(
        main_mod.parse_settings(
            [
                "--device",
                "xla",
                "--parallel",
                "none",
                "--model",
                cli.model,
                "--batch_size",
                str(cli.batch_size),
                "--epochs",
                "3",
                "--eval_every_epochs",
                "1",
                "--output_dir",
                out_dpath,
                "--log_every",
                "1000",
            ]
            + get_data_flags(cli)
        ),
        runtime,
    )
    counts = [int(m.group(1)) for m in re.finditer(r"xla: (\d+) graphs compiled so far", stream.getvalue())]
    print(f"compiles after epoch 1: {counts[0]}, after epoch 3: {counts[-1]} ({counts[-1] - counts[0]} new after warm-up)")


def main() -> None:
    cli = get_args()
    os.environ.setdefault("PJRT_DEVICE", "CPU")  # before torch_xla is imported
    from utils.device import make_runtime  # torch_xla before TensorFlow

    runtime = make_runtime("xla")
    bench_overlap(cli, runtime)
    count_compiles(cli, runtime)


if __name__ == "__main__":
    main()
