"""Train a backbone: `python main.py [--config recipe.yaml] [--flag value ...]`.

Flags -> settings (`config.py`) -> runtime -> data -> model and optimizer -> task -> engine. With no
arguments it trains the default model on the embedded digits dataset on CPU. This file only wires the
components together; each one owns its settings and checks.

Exit codes (by exception type, see `utils.errors`):
  0    trained to the end
  1    a bug: any other exception, with its traceback
  2    bad input, printed as one `error: ...` line naming the value and the fix: argparse errors, any check at start-up (before the first train step: see
       `utils.errors.startup`), and bad data found while training (a corrupt record)
  3    the loss or gradient norm became nan or inf (`error: loss became nan or inf between steps a and b ...`); the last good checkpoint is kept
  4    writing to --output_dir failed during training (disk full, read-only, permissions): `error: ...` names the file; earlier checkpoints are intact
  130  SIGINT (Ctrl-C), 143 SIGTERM: 128 + the signal number. During training the step in flight finishes and a checkpoint is written; the `stopped: ...` line
       says how to resume (`--resume auto --output_dir ...`)
"""

import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable

from cli import parser as cli_parser
from utils import process

os.environ.update(process.env_defaults())  # before torch is imported: OpenMP reads its settings once (utils/process.py)

if __name__ == "__main__" and cli_parser.wants_help(sys.argv[1:]):
    cli_parser.get_args_parser().parse_args(sys.argv[1:])  # prints the flags with their defaults and exits, in a fraction of a second: no torch import

import torch
import yaml

import datasets
import engine
import models
from config import Settings, get_args_parser, get_resolved_config, make_settings, parse_args, parse_settings  # noqa: F401  (the CLI API)
from utils import checkpoint as ckpt
from utils import errors, fs, preemption
from utils.device import Runtime
from utils.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_OUTPUT_WRITE, get_exit_code  # noqa: F401  (the exit codes above, decided by type)
from utils.logging import MetricLogger, parse_profile_steps, setup_logging

log = logging.getLogger("train")


def main(argv: list[str] | None = None) -> dict:
    """Parse, then run this process's share of the run (every process of a PJRT launch runs `run`)."""
    args = parse_args(argv)
    if args.list_models is not None:
        print("\n".join(models.list_models(args.list_models)))
        return {}
    s = make_settings(args)
    if s.runtime.parallel == "pjrt":
        import torch_xla

        # One process per local device (TPU v4+: one per chip); every process runs run() on its own share.
        torch_xla.launch(_run_process, args=(s,))
        return {}
    return _run_process(0, s)


def _run_process(index: int, s: Settings) -> dict:
    setup_logging(True, debug=s.logs.log_level == "debug")  # before the runtime: torch_xla's import-time notices go through the console filter
    # The runtime first: on XLA it imports torch_xla before anything imports TensorFlow.
    with errors.startup():
        runtime = s.runtime.make_runtime()
    setup_logging(runtime.is_main)
    try:
        return run(s, runtime)
    finally:
        runtime.close()


def run(s: Settings, runtime: Runtime) -> dict:
    """The start-up phase (every check, inside `errors.startup()`), then training; returns the final metrics."""
    if s.activations.extract_only:
        return run_extract_only(s, runtime)
    with errors.startup():
        trainer = build_trainer(s, runtime)
    try:
        metrics = trainer.fit()
        metrics.update(score_held_out(s, runtime, trainer))
        if s.activations.enabled:
            info = {"model": s.model.model, "checkpoint": trainer.save(), "checkpoint_step": trainer.position.global_step}
            metrics.update(extract_activations(s, runtime, trainer.model, _extraction_task(s, runtime, trainer.data, trainer.task), trainer.data, info))
    finally:
        trainer.logger.close()
    summary = {**metrics, "steps": trainer.position.global_step}
    if runtime.compile_count() is not None:
        summary["compiles"] = runtime.compile_count()
    if runtime.is_main:
        print("final: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary


def _extraction_task(s: Settings, runtime: Runtime, data: datasets.Data, task=None):
    """The eval forward extraction runs: the plain classifier for images (a distillation teacher stays out), the set task for cells."""
    if data.kind == "image":
        from tasks.classification import ClassificationTask

        return ClassificationTask(runtime)
    return task if task is not None else TASKS[data.kind](s, runtime, None, data)


def extract_activations(s: Settings, runtime: Runtime, model: torch.nn.Module, task, data: datasets.Data, info: dict) -> dict:
    """One pass over --extract_split with --extract_layers hooked, into --activations_dir (resumed there); returns the figures of this process."""
    from activations import extract
    from activations.source import make_source

    with errors.startup():
        dpath = s.activations.get_dpath(s.train.output_dir)
        source = make_source(data, s.activations.extract_split, runtime.rank, runtime.world_size, s.data.seed)
        prepared = extract.setup(model, task, runtime, source, s.activations, dpath, {**info, "flags": s.flags}, seed=s.data.seed)
    out = extract.run(model, task, runtime, prepared, s.activations, dpath)
    return {f"activations/{k}": v for k, v in out.items()}


def run_extract_only(s: Settings, runtime: Runtime) -> dict:
    """--extract_only: the weights of --resume or --init_checkpoint, no optimizer, one extraction pass."""
    with errors.startup():
        check_startup(dataclasses.replace(s, resume="", train=dataclasses.replace(s.train, output_dir="")), runtime)  # nothing is written to --output_dir
        data = datasets.build_data(s.data, runtime.rank, runtime.world_size)
        model = build_model(s, runtime, data)
        info = {"model": s.model.model, "checkpoint": s.model.init_checkpoint, "checkpoint_step": ckpt.get_checkpoint_step(s.model.init_checkpoint or "")}
        found = ckpt.find_resume(s.resume, s.train.output_dir)
        if found:
            ckpt.load_model_state(runtime.unwrap(model), ckpt.get_model_state(found[1]), source=found[0], what="--resume")
            info |= {"checkpoint": found[0], "checkpoint_step": (found[1].get("position") or {}).get("global_step")}
        if not info["checkpoint"]:
            raise ValueError("--extract_only needs trained weights: --init_checkpoint FILE, or --resume auto|PATH with the run's --output_dir")
        task = _extraction_task(s, runtime, data)
    summary = extract_activations(s, runtime, model, task, data, info)
    if runtime.is_main:
        print("final: " + "  ".join(f"{k} {v}" for k, v in summary.items()))
    return summary


def score_held_out(s: Settings, runtime: Runtime, trainer: engine.Trainer) -> dict:
    """Cell sets: cell-eval's own metrics on every cell of every held-out group, beside the in-loop ones (sampled sets)."""
    if trainer.data.kind != "cellset" or s.cell_eval.cell_eval == "off":
        return {}
    from tasks.cellset import score_with_cell_eval

    outdir = fs.join(s.train.output_dir, "cell_eval") if s.train.output_dir else os.path.join("output", "cell_eval")
    out = score_with_cell_eval(trainer.model, trainer.task, trainer.data.cells, runtime, outdir, s.cell_eval)
    trainer.logger.scalars(trainer.position.global_step, {k.removeprefix("cell_eval/"): v for k, v in out.items()}, prefix="cell_eval/")
    return out


def check_startup(s: Settings, runtime: Runtime) -> None:
    """The checks that take a second, before the data is built: batch sizes over the devices, --resume and --output_dir, the model and its flags."""
    split = max(runtime.world_size, runtime.n_devices)
    for flag, value in (("--batch_size", s.data.batch_size), ("--eval_batch_size", s.data.eval_batch_size)):
        if value % split:
            raise ValueError(
                f"{flag} {value} does not divide over {runtime.world_size} process(es) x {runtime.n_devices // runtime.world_size} device(s) each; "
                f"pick a multiple of {split}, e.g. {(value // split + 1) * split}"
            )
    ckpt.check_output_dir(s.resume, s.train.output_dir)
    s.model.check_flags(s.data.kind, s.data.data_set)
    log.info("runtime: %s", runtime.describe())
    log.info("batch: %d global, %d per process, %d per device", s.data.batch_size, s.data.batch_size // runtime.world_size, s.data.batch_size // split)


def build_model(s: Settings, runtime: Runtime, data: datasets.Data) -> torch.nn.Module:
    """The model the data asks for, on the device, wrapped for the runtime's parallelism."""
    if data.kind == "cellset":
        kwargs = s.model.cellset_kwargs(data.cells.n_genes, data.cells.n_perts, data.cells.n_contexts)
    else:
        kwargs = s.model.image_kwargs(s.model.num_classes or data.num_classes)
    if data.image_shape is not None:
        models.check_model_input(s.model.model, kwargs, data.image_shape)
    model = models.create_model(s.model.model, **kwargs)
    s.model.init_head(model)
    if s.model.init_checkpoint:
        ckpt.load_model_weights(model, s.model.init_checkpoint, what="--init_checkpoint")
    model = runtime.place_model(model, data.image_shape)  # on the device; NHWC weights with --channels_last
    model = runtime.wrap_model(model)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters, %s", s.model.model, n_params / 1e6, ", ".join(f"{k} {v}" for k, v in kwargs.items() if v is not None))
    return model


def _image_task(s: Settings, runtime: Runtime, model: torch.nn.Module, data: datasets.Data):
    from tasks.classification import ClassificationTask

    if not s.kd.kd:
        return ClassificationTask(runtime, label_smoothing=s.classification.label_smoothing, loss=s.classification.loss)
    from tasks.distillation import make_distillation_task

    # After the optimizer: the teacher's weights must never be in it, nor in the EMA or the checkpoint.
    return make_distillation_task(s.kd, runtime, model, s.model.num_classes or data.num_classes, label_smoothing=s.classification.label_smoothing)


def _cellset_task(s: Settings, runtime: Runtime, model: torch.nn.Module, data: datasets.Data):
    from tasks.cellset import make_cellset_task

    return make_cellset_task(s.set_loss, data.cells)


# Data.kind -> the task that trains on it.
TASKS: dict[str, Callable] = {"image": _image_task, "cellset": _cellset_task}


def get_flops_probe(data: datasets.Data, task) -> tuple[Callable, dict]:
    """A 2-example host batch of the data's shapes and the train loss to count FLOPs with (a distillation teacher: its forward only)."""
    if data.kind == "image":
        batch = {"image": torch.zeros(2, *data.image_shape), "label": torch.zeros(2, dtype=torch.long)}
    else:
        n, g = data.cells.cells_per_set, data.cells.n_genes
        batch = {
            "ctrl": torch.zeros(2, n, g),
            "target": torch.zeros(2, n, g),
            "pert": torch.zeros(2, dtype=torch.long),
            "cell_line": torch.zeros(2, dtype=torch.long),
        }
    batch["_mask"] = torch.ones(2, dtype=torch.bool)
    teacher = getattr(task, "teacher", None)
    if teacher is None:
        return (lambda m, b: task.train_loss(m, b)[0]), batch
    from utils.flops import to_meta

    teacher_meta = to_meta(teacher)

    def loss_with_teacher(m: torch.nn.Module, b: dict) -> torch.Tensor:
        with torch.no_grad():
            teacher_meta(b["image"])
        return m(b["image"]).float().sum()

    return loss_with_teacher, batch


def build_logger(s: Settings, runtime: Runtime, data: datasets.Data, model: torch.nn.Module, task, total_steps: int) -> MetricLogger:
    """The metric logger: its backends (main process), host and device stats, and MFU from the model's FLOPs per step, counted once here."""
    from utils import devstats, flops
    from utils import logging as logs

    backends = logs.make_backends(s.logs, s.train.output_dir, total_steps, s.train.epochs, s.flags, bool(s.resume)) if runtime.is_main else []
    stats = logs.make_stats(s.logs, runtime.kind, runtime.device, spmd=runtime.parallel in ("spmd", "fsdp"))
    try:
        loss_fn, batch = get_flops_probe(data, task)
        per_example = flops.count_flops_per_example(runtime.unwrap(model), loss_fn, batch)
    except Exception as e:  # noqa: BLE001  (a model the meta device cannot run: the run trains the same, without MFU)
        log.warning("flops: not counted (%s: %s); no MFU in this run", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    else:
        kind = devstats.get_device_kind(runtime.kind, runtime.device)
        stats.append(flops.make_mfu_stats(per_example, s.data.batch_size, runtime.n_devices, kind, s.logs.peak_tflops))
    return MetricLogger(backends, runtime.is_main, stats=stats, n_devices=runtime.n_devices)


def build_profiler(s: Settings, runtime: Runtime):
    """--profile_steps A:B on the main process (a trace under --output_dir/tb), else None."""
    steps = parse_profile_steps(s.logs.profile_steps)
    if steps is None or not runtime.is_main or not s.train.output_dir:
        return None
    from utils.profiling import StepProfiler

    return StepProfiler(steps[0], steps[1], os.path.join(s.train.output_dir, "tb"), runtime.kind, runtime.wait)


def build_trainer(s: Settings, runtime: Runtime) -> engine.Trainer:
    """Everything before the first train step: data, model, optimizer, task, EMA, logger, resume. Runs inside `utils.errors.startup()`."""
    check_startup(s, runtime)
    torch.manual_seed(s.data.seed)
    data = datasets.build_data(s.data, runtime.rank, runtime.world_size)
    log.info("data: %s, %d steps per epoch, %d eval examples in %d batches", data.info, data.steps_per_epoch, data.n_eval_examples, data.n_eval_batches)
    model = build_model(s, runtime, data)
    optimizer = s.optim.make_optimizer(runtime.unwrap(model))
    schedule = s.optim.make_schedule(data.steps_per_epoch)
    log.info("%s", schedule.describe(data.steps_per_epoch))
    task = TASKS[data.kind](s, runtime, model, data)
    ema = None
    if s.ema.model_ema:
        from utils.ema import ModelEma

        ema = ModelEma(runtime.unwrap(model), s.ema.model_ema_decay)
        log.info("model EMA: decay %g, updated inside the train step%s", s.ema.model_ema_decay, ", evaluated as eval_ema/*" if s.ema.model_ema_eval else "")
    output_dpath = s.train.output_dir
    if runtime.is_main and output_dpath:
        fs.write_text_atomic(fs.join(output_dpath, "args.yaml"), yaml.safe_dump(s.flags, sort_keys=False), what="--output_dir")
    logger = build_logger(s, runtime, data, model, task, schedule.total_steps)
    trainer = engine.Trainer(
        s.train,
        runtime,
        model,
        task,
        optimizer,
        schedule,
        data,
        logger,
        examples_per_step=s.data.batch_size,
        profiler=build_profiler(s, runtime),
        ema=ema,
        run_config=s.flags,
        metadata=data.metadata,
    )
    found = ckpt.find_resume(s.resume, output_dpath)
    if found:
        fpath, state = found
        trainer.load_state_dict(state, source=fpath)
        log.info("resumed from %s at epoch %d, step %d", fpath, trainer.position.epoch, trainer.position.global_step)
    if s.activations.enabled:
        from activations.capture import check_layers
        from activations.source import make_source

        check_layers(runtime.unwrap(model), s.activations.layers, s.activations.get_tokens())
        make_source(data, s.activations.extract_split, runtime.rank, runtime.world_size, s.data.seed)
    return trainer


def cli(argv: list[str] | None = None) -> int:
    """`python main.py ...`: run `main`, print one `error:` or `stopped:` line on stderr for an expected stop, and return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except SystemExit as e:  # argparse already printed the usage and the error
        if isinstance(e.code, int | None):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout's reader went away (`--list_models | head`): the shell's code for SIGPIPE, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (set-up, data, shut-down): nothing to save
        print("stopped: interrupted (SIGINT) outside the training loop; no checkpoint was written for it", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as e:
        code = errors.report(e, argv)
        if code is None:
            raise
        return code
    return 0


def program() -> None:
    """`python main.py`: the CLI as a process. Signals after training (or a second one during a stop) exit at once: see `utils.preemption`."""
    process.setup_process()
    preemption.set_exit_at_once(True)
    code = cli()
    preemption.setup_exit_now_handlers()  # from here on a signal exits at once: nothing is left to save
    preemption.exit_process(code)


if __name__ == "__main__":
    program()
