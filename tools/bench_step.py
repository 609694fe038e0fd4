"""Train-step benchmark: our engine against a hand-written minimal loop on the same model and batch, and on a GPU against timm train.py's loop.

    python -m tools.bench_step                     # cpu: small_cnn, 32 px, batch 64, fp32: engine overhead = engine time / minimal time
    python -m tools.bench_step --device cuda --compile --channels_last --opt_fused --tf32 --pin_memory   # vit_small_patch16_224, 224 px, bf16

Loops, each with its own copy of one initial model and its own optimizer (AdamW, timm's parameter groups), all timed in the same process,
interleaved round by round (the order rotates) so machine load hits every loop alike:
- engine: `engine.Trainer.train_epoch` on a synthetic `Data` whose host batch is one fixed tensor dict: the runtime's device loader (pinned,
  side-stream copies with --pin_memory), the LR/WD schedule written every step, the train step (forward_loss compiled with --compile, backward,
  gradient norm, non-finite count, update) and the logging closure every --log_every steps with a run's default logger (console, host and
  device stats), as a training run has them.
- minimal: forward, loss, backward, optimizer step, zero_grad; the same speed options (the same forward+loss compiled, channels-last, fused).
- timm (--device cuda): timm train.py's train_one_epoch step as written there: torch.compile(model) (its --torchcompile), channels-last input,
  bf16 autocast (no scaler), nn.CrossEntropyLoss, backward, optimizer.step, loss.item() every step (its loss meter), zero_grad, step_update.
The minimal and timm loops copy the host batch to the device every step (non-blocking; pinned once up front with --pin_memory, as a
DataLoader with pin_memory hands them out). TF32 and cuDNN's autotuner are process-wide: every loop runs under the runtime's settings
(timm's train.py always turns TF32 on: compare with --tf32).
"""

import argparse
import os
import statistics
import time

from cli.help import ArgumentParser
from utils import process

DEFAULTS = {  # device -> defaults of the flags left unset
    "cpu": {"model": "small_cnn", "img_size": 32, "batch_size": 64, "num_classes": 10, "precision": "fp32", "steps": 30, "loops": "engine,minimal"},
    "cuda": {
        "model": "vit_small_patch16_224",
        "img_size": 224,
        "batch_size": 256,
        "num_classes": 1000,
        "precision": "bf16",
        "steps": 50,
        "loops": "engine,minimal,timm",
    },
}


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("python -m tools.bench_step", description=__doc__.split("\n")[0])  # cli.help: every default once, two-line errors
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the loops run")
    p.add_argument("--model", default=None, help="timm or models/ name (default: small_cnn on cpu, vit_small_patch16_224 on cuda)")
    p.add_argument("--img_size", type=int, default=None, help="square input side in pixels (default: 32 on cpu, 224 on cuda)")
    p.add_argument("--batch_size", type=int, default=None, help="images per step (default: 64 on cpu, 256 on cuda)")
    p.add_argument("--num_classes", type=int, default=None, help="classifier outputs (default: 10 on cpu, 1000 on cuda)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="autocast dtype of every loop (default: fp32 on cpu, bf16 on cuda)")
    p.add_argument("--loops", default=None, help="comma-separated: engine, minimal, timm (default: engine,minimal on cpu, all three on cuda)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop and round (default: 30 on cpu, 50 on cuda)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; each loop runs once per round, in rotating order")
    p.add_argument("--log_every", type=int, default=20, help="the engine's --log_every: steps between its logging closures (one host read each)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of every loop (constant)")
    p.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay of every loop")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batch")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, one per core)")
    for flag, what in (
        ("compile", "torch.compile: the engine's and the minimal loop's forward+loss, timm's model (its --torchcompile)"),
        ("channels_last", "NHWC weights and image batches in every loop"),
        ("tf32", "TF32 float32 matmuls (cuda; process-wide, so every loop)"),
        ("pin_memory", "pinned host batches (cuda): the engine's pinning thread and side-stream copies; the other loops' batch pinned once"),
        ("opt_fused", "torch's fused AdamW kernel in every loop"),
    ):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=False, help=what)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = get_args_parser().parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    unknown = [name for name in args.loops if name not in ("engine", "minimal", "timm")]
    if unknown or not args.loops:
        get_args_parser().error(f"--loops {','.join(args.loops)}: pick from engine, minimal, timm")
    if "timm" in args.loops and args.device != "cuda":
        get_args_parser().error("--loops timm is the GPU comparison (timm train.py's loop at 224 px in bf16): use --device cuda")
    return args


def _host_batch(args: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(args.seed)
    image = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g)
    return {"image": image, "label": torch.randint(0, args.num_classes, (args.batch_size,), generator=g)}


def make_engine_loop(args: argparse.Namespace, runtime, model, host_batch):
    """A Trainer over synthetic data (one fixed host batch); the returned function runs one epoch of `args.steps` steps."""
    import itertools

    import engine
    import optim_factory
    from datasets import Data
    from tasks.classification import ClassificationTask
    from utils import logging as logs

    model = runtime.wrap_model(runtime.place_model(model, tuple(host_batch["image"].shape[1:])))
    optimizer = optim_factory.make_optimizer(runtime.unwrap(model), "adamw", args.lr, args.weight_decay, fused=args.opt_fused)
    data = Data(
        kind="image",
        steps_per_epoch=args.steps,
        n_eval_batches=0,
        n_eval_examples=0,
        make_train_batches=lambda epoch, start: itertools.repeat(host_batch, args.steps - start),
        make_eval_batches=lambda: iter(()),
        num_classes=args.num_classes,
        image_shape=tuple(host_batch["image"].shape[1:]),
    )
    n_epochs = args.rounds + 2
    schedule = optim_factory.Schedule(total_steps=n_epochs * args.steps, lr=args.lr, min_lr=args.lr, weight_decay=args.weight_decay)
    config = engine.TrainConfig(epochs=n_epochs, log_every=args.log_every, output_dir="")
    log_config = logs.LoggingConfig()  # a run's defaults: the console backend (no output dir: no files) and the host and device stats at log points
    backends = logs.make_backends(log_config, "", schedule.total_steps, n_epochs, {}, False)
    logger = logs.MetricLogger(backends, True, stats=logs.make_stats(log_config, runtime.kind, runtime.device, spmd=False))
    trainer = engine.Trainer(config, runtime, model, ClassificationTask(runtime), optimizer, schedule, data, logger, examples_per_step=args.batch_size)
    epoch = iter(range(n_epochs))
    return lambda: trainer.train_epoch(next(epoch))


def _source_batch(args: argparse.Namespace, host_batch):
    """What the minimal and timm loops start each step from: the host batch, pinned once if --pin_memory (a DataLoader's pin_memory=True)."""
    return {k: v.pin_memory() for k, v in host_batch.items()} if args.pin_memory else host_batch


def make_minimal_loop(args: argparse.Namespace, runtime, model, host_batch):
    """Forward, loss, backward, update: the least a train step can be, with the same speed options."""
    import timm.optim
    import torch
    import torch.nn.functional as F

    device, channels_last = runtime.device, args.channels_last
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=args.weight_decay, **({"fused": True} if args.opt_fused else {}))
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None

    def forward_loss(x, y):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast_dtype is not None):
            return F.cross_entropy(model(x).float(), y)

    forward_loss = torch.compile(forward_loss, dynamic=False) if args.compile else forward_loss
    source = _source_batch(args, host_batch)

    def run():
        for _ in range(args.steps):
            x = source["image"].to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            loss = forward_loss(x, source["label"].to(device, non_blocking=True))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def make_timm_loop(args: argparse.Namespace, runtime, model, host_batch):
    """timm train.py's train_one_epoch step (single process, no grad accumulation, no mixup, no clipping), as that script writes it."""
    import functools

    import timm.optim
    import timm.scheduler
    import torch
    from torch import nn

    device = runtime.device
    model = model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=args.weight_decay, **({"fused": True} if args.opt_fused else {}))
    if args.compile:
        model = torch.compile(model, backend="inductor")  # timm: after DDP, the model (not the step)
    amp_autocast = functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    loss_fn = nn.CrossEntropyLoss().to(device)
    scheduler = timm.scheduler.CosineLRScheduler(optimizer, t_initial=10**6, t_in_epochs=False)
    source = _source_batch(args, host_batch)
    num_updates = [0]
    losses: list[float] = []

    def run():
        for _ in range(args.steps):
            input, target = source["image"].to(device, non_blocking=True), source["label"].to(device, non_blocking=True)
            if args.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(input)
                loss = loss_fn(output, target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())  # timm's losses_m.update(loss.item() * accum_steps, input.size(0)) when not distributed
            num_updates[0] += 1
            optimizer.zero_grad()
            scheduler.step_update(num_updates=num_updates[0], metric=statistics.fmean(losses[-50:]))

    return run


LOOPS = {"engine": make_engine_loop, "minimal": make_minimal_loop, "timm": make_timm_loop}


def time_loops(args: argparse.Namespace, runtime, runs: dict) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One untimed warm-up round (compiles, autotuning, optimizer state), then `args.rounds` timed ones.

    Returns wall seconds and process CPU seconds (every thread of this process) per step, of each loop and round. On a shared CPU machine the
    CPU time is the steadier figure: another process's load stretches the wall time of whichever loop it lands on.
    """
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            runtime.wait()
            t0, c0 = time.perf_counter(), time.process_time()
            runs[name]()
            runtime.wait()
            dt, dc = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
            if r == 0:
                print(f"warm-up  {name:8s} {dt * 1e3:9.1f} ms/step (includes compiles)", flush=True)
                continue
            wall[name].append(dt)
            cpu[name].append(dc)
            print(f"round {r}  {name:8s} {dt * 1e3:9.2f} ms/step  {args.batch_size / dt:9.1f} images/s  cpu {dc * 1e3:9.2f} ms/step", flush=True)
    return wall, cpu


def _ratio_line(what: str, num: list[float], den: list[float], target: str) -> str:
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return f"{what}: {statistics.median(num) / statistics.median(den):.3f}x (per round {min(ratios):.3f}-{max(ratios):.3f}x; target {target})"


def report(args: argparse.Namespace, times: dict[str, list[float]], cpu: dict[str, list[float]], load_before: tuple[float, ...]) -> None:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n{args.model}, {args.img_size} px, batch {args.batch_size}, {args.precision}, device {args.device}; {args.rounds} rounds x {args.steps} steps")
    options = [f for f in ("compile", "channels_last", "tf32", "pin_memory", "opt_fused") if getattr(args, f)]
    print(f"speed options: {', '.join(options) or 'none'}; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    for name, ts in times.items():
        spread = f"(min {min(ts) * 1e3:.2f}, max {max(ts) * 1e3:.2f})"
        rate = args.batch_size / med[name]
        print(f"  {name:8s} median {med[name] * 1e3:8.2f} ms/step {spread}  {rate:9.1f} images/s  cpu {statistics.median(cpu[name]) * 1e3:.2f} ms/step")
    if "engine" in med and "minimal" in med:
        print(_ratio_line("engine / minimal step time (wall)", times["engine"], times["minimal"], "<= 1.1x"))
        print(_ratio_line("engine / minimal step time (cpu) ", cpu["engine"], cpu["minimal"], "<= 1.1x"))
    if "engine" in med and "timm" in med:
        print(_ratio_line("engine / timm images/s", times["timm"], times["engine"], ">= 1.0x"))


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    args = parse_args(argv)  # before torch: --help and flag errors stay fast
    os.environ.update(process.env_defaults())
    load_before = os.getloadavg()
    import copy

    import torch

    import models
    from utils import speed
    from utils.device import DeviceUnavailableError, make_runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    options = speed.SpeedOptions(compile=args.compile, channels_last=args.channels_last, tf32=args.tf32, pin_memory=args.pin_memory)
    try:
        runtime = make_runtime(args.device, args.precision, "none", options=options)
    except (ValueError, DeviceUnavailableError) as e:  # no GPU, an option this device cannot take: one line, as main.py
        raise SystemExit(f"error: {e}") from None
    torch.manual_seed(args.seed)
    size_kwargs = {"img_size": args.img_size} if "img_size" in models.registry.get_model_arg_names(args.model) else {}  # ViTs: the position embedding's grid
    model0 = models.create_model(args.model, num_classes=args.num_classes, **size_kwargs)
    host_batch = _host_batch(args)
    runs = {name: LOOPS[name](args, runtime, copy.deepcopy(model0), host_batch) for name in args.loops}
    print(f"{runtime.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    times, cpu = time_loops(args, runtime, runs)
    report(args, times, cpu, load_before)
    return times


if __name__ == "__main__":
    main()
