"""Train and eval loops in plain PyTorch. Device specifics live behind `utils.device.Runtime`.

`train_step` is the whole step (forward, loss, backward, gradient reduction, clipping, optimizer
update) and returns device tensors only; on XLA it is compiled as one graph. `fit` only schedules,
logs (through step closures: values reach the host every `log_every` steps and never inside the
step), evaluates and checkpoints.

Stopping: during `fit`, SIGTERM and SIGINT only set a flag (`utils.preemption.StopSignals`); the
step in flight finishes, a checkpoint of that step is written and `TrainingStopped` is raised. With
one process the flag is read after every step (a Python bool: free). With several, all of them must
stop at the same step, or the ones still training hang in their next collective and the checkpoint
mixes steps; so the flag is summed over processes, and only at log points (every `log_every` steps)
and epoch ends, where values are read on the host anyway: on XLA a reduction read every step would
sync the host with the device every step. The price is that a multi-process run stops up to
`log_every` steps after the signal; keep `log_every` x step time well under the grace period between
SIGTERM and SIGKILL (30 s on preemptible GCE/TPU VMs).
"""

import collections
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

import optim_factory
from datasets import Data, EvalSet
from optim_factory import Schedule
from tasks.base import Task, reduce_eval
from utils import checkpoint as ckpt
from utils import preemption, settings
from utils.device import Runtime
from utils.ema import ModelEma
from utils.errors import TrainingDiverged
from utils.logging import MetricLogger, format_duration
from utils.profiling import StepProfiler

log = logging.getLogger("train")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop's settings: how long, how often it logs, evaluates and checkpoints, and where."""

    epochs: int = settings.setting(15, range=settings.POSITIVE)
    clip_grad: float = settings.setting(0.0, range=settings.NON_NEGATIVE)
    log_every: int = settings.setting(20, range=settings.POSITIVE)
    eval_every_epochs: int = settings.setting(5, range=settings.NON_NEGATIVE)
    save_every_epochs: int = settings.setting(5, range=settings.NON_NEGATIVE)
    save_every_steps: int = settings.setting(0, range=settings.NON_NEGATIVE)
    keep_last: int = settings.setting(
        3, range=settings.AT_LEAST_ONE, hint=" (the checkpoint just written is always kept; pass a large number to keep them all)"
    )
    output_dir: str = "output/default"
    model_ema_eval: bool = False

    def __post_init__(self):
        settings.check_fields(self)


@dataclasses.dataclass
class Position:
    """Where training is: the next step to run (global and within its epoch)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def forward_loss(model: nn.Module, task: Task, runtime: Runtime, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's forward and loss under the runtime's autocast: what `--compile` compiles (`Runtime.compile_forward`)."""
    with runtime.autocast():
        return task.train_loss(model, batch)


def train_step(
    model: nn.Module,
    task: Task,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    clip_grad: float,
    batch: dict[str, torch.Tensor],
    nonfinite_t: torch.Tensor,
    ema: ModelEma | None = None,
    forward: Callable | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step (and the EMA update, if any: part of the same graph); returns device metrics and the running count of non-finite steps.

    `forward(batch)`: `forward_loss` of this model and task, compiled with --compile (the Trainer builds it once); None: `forward_loss` itself.
    """
    loss, extra = forward(batch) if forward is not None else forward_loss(model, task, runtime, batch)
    loss.backward()
    runtime.reduce_gradients(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_grad > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(runtime.unwrap(model))
    loss = loss.detach()
    # Counted on the device: a host check here would sync every step. The logging closure reads it.
    nonfinite_t = nonfinite_t + (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float()
    return {"loss": loss, "grad_norm": grad_norm.detach(), **{k: v.detach() for k, v in extra.items()}}, nonfinite_t


def eval_step(model: nn.Module, task: Task, runtime: Runtime, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad(), runtime.autocast():
        return task.eval_outputs(model, batch)


def get_metric_name(set_name: str, metric: str) -> str:
    """`acc1` of eval set `val` is `val/acc1` (logged as eval/val/acc1); the one unnamed set keeps `acc1`."""
    return f"{set_name}/{metric}" if set_name else metric


def _tensors_only(batches: Iterable[dict], host: collections.deque) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors of each batch, for the device; its other values (lists of strings) wait in `host`, in batch order."""
    for batch in batches:
        host.append({k: v for k, v in batch.items() if not isinstance(v, torch.Tensor)})
        yield {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def evaluate_set(model: nn.Module, task: Task, eval_set: EvalSet, runtime: Runtime, step_fn: Callable) -> dict[str, float]:
    """One pass over one eval set's (padded, masked) batches of this process; metrics over every process's examples (`tasks.base.reduce_eval`)."""
    acc = task.make_eval_accumulator()
    host: collections.deque = collections.deque()
    n_batches = 0
    # The device loader hands batches out in order, so the host values of a device batch are the oldest ones waiting.
    for batch in runtime.device_loader(_tensors_only(eval_set.batches(), host)):
        acc.add(step_fn(batch), {**batch, **host.popleft()})
        n_batches += 1
    assert n_batches == eval_set.n_batches, f"eval produced {n_batches} batches, expected {eval_set.n_batches}"
    return reduce_eval(acc, runtime)


def evaluate(model: nn.Module, task: Task, data: Data, runtime: Runtime, step_fn: Callable | None = None) -> dict[str, float]:
    """Every eval set of the data, one after the other; metrics named by set (`get_metric_name`)."""
    step_fn = step_fn or runtime.compile(lambda batch: eval_step(model, task, runtime, batch), name="eval_step")
    was_training = model.training
    model.eval()
    metrics = {}
    for name, eval_set in data.get_eval_sets().items():
        metrics.update({get_metric_name(name, k): v for k, v in evaluate_set(model, task, eval_set, runtime, step_fn).items()})
    model.train(was_training)
    return metrics


def _ema_name(key: str) -> str:
    """`acc1` -> `ema_acc1`, `val/acc1` -> `val/ema_acc1`."""
    set_name, _, metric = key.rpartition("/")
    return get_metric_name(set_name, f"ema_{metric}")


def _describe(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class Trainer:
    """Owns the loop state; `fit()` runs epochs from `position` to `config.epochs`.

    `run_config` is the whole run's resolved configuration (what args.yaml holds): saved in every checkpoint, and compared on resume (`model`, `opt`).
    `metadata` describes the data the model was trained on (`Data.metadata`), saved as `data` so a checkpoint can be used without its dataset.
    """

    profiler: StepProfiler | None = None  # --profile_steps: told before and after each step (a class default, so a bare subclass's fit() works too)

    def __init__(
        self,
        config: TrainConfig,
        runtime: Runtime,
        model: nn.Module,
        task: Task,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        data: Data,
        logger: MetricLogger,
        examples_per_step: int,
        ema: ModelEma | None = None,
        run_config: dict | None = None,
        metadata: dict | None = None,
        profiler: StepProfiler | None = None,
    ):
        self.config, self.runtime, self.model, self.task, self.ema = config, runtime, model, task, ema
        self.profiler = profiler
        self.run_config = dict(run_config or {})
        self.metadata = dict(metadata or {})  # what the model was trained on (a set model's genes, perturbations, contexts): saved as "data"
        self.optimizer, self.schedule, self.data, self.logger = optimizer, schedule, data, logger
        self.examples_per_step = examples_per_step
        self.position = Position()
        self.nonfinite_t = torch.zeros((), device=runtime.device)
        self.failure: str | None = None
        self.last_checked_step = 0
        self.stop = preemption.StopSignals()
        self.stopping = False  # every process agreed to stop after the current step
        self.stopped_here = False  # that agreement came from a signal to this process (not one that arrived after it: the stop message)
        self._saved: tuple[int, str] | None = None  # (step, path) of the last checkpoint written
        self.compiles_after_warmup: int | None = None
        self._warm = {"train": False, "eval": False, "save": False}  # graphs each kind of work compiles once
        self.best: dict[str, float] = {}
        forward = runtime.compile_forward(lambda batch: forward_loss(model, task, runtime, batch))
        self._train_fn = runtime.compile(
            lambda batch, nf: train_step(model, task, optimizer, runtime, config.clip_grad, batch, nf, ema=ema, forward=forward), name="train_step"
        )
        self._eval_fn = runtime.compile(runtime.compile_forward(lambda batch: eval_step(model, task, runtime, batch)), name="eval_step")
        if ema is not None:
            self._eval_ema_fn = runtime.compile(runtime.compile_forward(lambda batch: eval_step(ema.module, task, runtime, batch)), name="eval_ema_step")

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The student only: a distillation teacher lives on the task and is never saved here."""
        state = {
            "model": self.runtime.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "position": dataclasses.asdict(self.position),
            "rng": {**ckpt.get_rng_state(), **self.runtime.get_rng_state()},
            "args": self.run_config,
            "best": dict(self.best),
        }
        if self.metadata:
            state["data"] = self.metadata
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict, source: str = "--resume") -> None:
        """Continue from one of our training checkpoints; anything else (a weights-only file,
        another model's or optimizer's checkpoint) is a ValueError naming the file and the fix."""
        missing = [k for k in ("model", "optimizer", "position", "rng") if k not in state]
        if missing:
            raise ValueError(
                f"--resume {source!r} is not a training checkpoint of main.py (no {', '.join(missing)}); "
                "to start from its weights pass it as --init_checkpoint instead"
            )
        saved = state.get("args") if isinstance(state.get("args"), dict) else {}
        for key in ("model", "opt"):
            if saved.get(key) is not None and saved[key] != self.run_config.get(key):
                raise ValueError(
                    f"--resume {source!r} is a checkpoint of --{key} {saved[key]} but this run has --{key} {self.run_config.get(key)}; "
                    f"resume with --{key} {saved[key]}, or start from its weights with --init_checkpoint"
                )
        ckpt.load_model_state(self.runtime.unwrap(self.model), state["model"], source=source, what="--resume")
        try:
            optim_factory.load_optimizer_state(self.optimizer, state["optimizer"])  # this run's --opt_fused, whatever the checkpoint's
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(
                f"--resume {source!r}: its optimizer state does not fit this run's optimizer ({e}); was it trained with another --layer_decay or "
                "--weight_decay setting? Resume with the same flags, or start from its weights with --init_checkpoint"
            ) from e
        for group in self.optimizer.param_groups:  # keep our schedule bookkeeping if an old file lacks it
            group.setdefault("lr_scale", 1.0)
            group.setdefault("wd_scale", 1.0 if group.get("weight_decay", 0.0) > 0 else 0.0)
        self.position = Position(**state["position"])
        self.best = dict(state.get("best", {}))
        ckpt.set_rng_state(state["rng"])
        self.runtime.set_rng_state(state["rng"])
        if self.ema is None:
            return
        if "model_ema" in state:
            self.ema.module.load_state_dict(state["model_ema"])
        else:
            log.warning("--model_ema is on but the checkpoint has no EMA weights; the EMA starts over from the resumed model weights")
            self.ema.set(self.runtime.unwrap(self.model))

    def save(self) -> str | None:
        """Checkpoint the current position (main process writes); refuses if training diverged."""
        self._check_finite()
        if not self.runtime.is_main or not self.config.output_dir:
            return None
        if self._saved is not None and self._saved[0] == self.position.global_step:
            return self._saved[1]  # this step is saved already (--save_every_steps, then a stop signal)
        fpath = ckpt.save_checkpoint(self.state_dict(), self.config.output_dir, self.position.global_step, keep_last=self.config.keep_last)
        self._saved = (self.position.global_step, fpath)
        log.info("saved %s", fpath)
        return fpath

    # ---- logging ------------------------------------------------------------------------------
    def _log_closure(self, step: int, epoch: int, lr: float, out: dict[str, torch.Tensor], nonfinite_t: torch.Tensor, epoch_frac: float = 0.0) -> None:
        values = {k: float(v.item()) for k, v in out.items()}
        if float(nonfinite_t.item()) > 0 and self.failure is None:
            self.failure = f"loss became nan or inf between steps {self.last_checked_step} and {step}"
        self._check_recompiles(self.last_checked_step, step)
        self.last_checked_step = step
        values["lr"] = lr
        self.logger.train_progress(step, epoch, self.config.epochs, values, self.examples_per_step, epoch_frac=epoch_frac)

    def _check_recompiles(self, step_a: int, step_b: int) -> None:
        """After warm-up, name the step range of any new compile (read in the logging closure: no extra sync)."""
        n = self.runtime.compile_count()
        if n is None or self.compiles_after_warmup is None or n <= self.compiles_after_warmup:
            return
        log.warning(
            "xla: %d new compile(s) between steps %d and %d after warm-up; "
            "likely cause: a batch with another shape (a partial last batch, a different eval batch size), a Python number that changes per step baked "
            "into the graph, or a host read (.item(), print) inside the step. Rerun with PT_XLA_DEBUG_LEVEL=2 to see each compile's cause",
            n - self.compiles_after_warmup,
            step_a,
            step_b,
        )
        self.compiles_after_warmup = n

    def _check_finite(self) -> None:
        if self.failure is None and float(self.nonfinite_t.item()) > 0:
            self.failure = f"loss became nan or inf between steps {self.last_checked_step} and {self.position.global_step}"
        if self.failure is not None:
            raise TrainingDiverged(
                f"{self.failure}; the last good checkpoint in {self.config.output_dir} is kept (lower --lr, raise --warmup_epochs, set --clip_grad, "
                "or check the inputs for nan or inf values)"
            )

    def _report_compiles(self, epoch: int, warm_before: bool) -> None:
        """Log compile and transfer counts; from the first epoch that starts fully warm, any new compile is a warning."""
        n = self.runtime.compile_count()
        if n is None:
            return
        transfers = self.runtime.transfer_count()
        log.info("xla: %d graphs compiled so far, %d device-to-host transfers (epoch %d)", n, transfers, epoch + 1)
        self.logger.scalars(self.position.global_step, {"compiles": n, "transfers": transfers}, prefix="xla/")
        if not warm_before:
            self.compiles_after_warmup = n  # this epoch ran something for the first time (train, eval or checkpoint): its compiles are warm-up
        elif n > self.compiles_after_warmup:
            log.warning(
                "xla: %d new compiles during epoch %d (after warm-up); a shape or a Python value changed between steps: "
                "run with PT_XLA_DEBUG_LEVEL=2 to see each compile's cause",
                n - self.compiles_after_warmup,
                epoch + 1,
            )
            self.compiles_after_warmup = n

    # ---- loop ---------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = evaluate(self.model, self.task, self.data, self.runtime, self._eval_fn)
        self.logger.scalars(self.position.global_step, metrics, prefix="eval/")
        log.info("eval after epoch %d: %s (%.1fs)", self.position.epoch, _describe(metrics), time.perf_counter() - t0)
        if self.ema is None or not self.config.model_ema_eval:
            return metrics
        ema_metrics = evaluate(self.ema.module, self.task, self.data, self.runtime, self._eval_ema_fn)
        self.logger.scalars(self.position.global_step, ema_metrics, prefix="eval_ema/")
        log.info("eval of the EMA weights after epoch %d: %s", self.position.epoch, _describe(ema_metrics))
        return {**metrics, **{_ema_name(k): v for k, v in ema_metrics.items() if not k.endswith("n_examples")}}

    def train_epoch(self, epoch: int) -> None:
        cfg, pos = self.config, self.position
        steps = self.data.steps_per_epoch
        batches = self.logger.time_input(self.runtime.device_loader(self.data.train_batches(epoch, pos.step_in_epoch)))  # perf/data_wait_pct
        for batch in batches:
            if self.profiler is not None:
                self.profiler.before_step(pos.global_step + 1)
            lr = self.schedule.apply(self.optimizer, pos.global_step)
            out, self.nonfinite_t = self._train_fn(batch, self.nonfinite_t)
            pos.global_step += 1
            pos.step_in_epoch += 1
            if pos.global_step % cfg.log_every == 0 or pos.step_in_epoch == steps:
                self.runtime.add_step_closure(self._log_closure, args=(pos.global_step, epoch, lr, out, self.nonfinite_t, pos.step_in_epoch / steps))
            self.runtime.mark_step()
            if self.profiler is not None:
                self.profiler.after_step(pos.global_step)
            if self.failure is not None:
                self._check_finite()
            if cfg.save_every_steps and pos.global_step % cfg.save_every_steps == 0 and pos.step_in_epoch < steps:
                self.save()
            if pos.step_in_epoch == steps or self._should_stop(sync=pos.global_step % cfg.log_every == 0):
                break
        if self.stopping and pos.step_in_epoch < steps:
            return  # stopped mid-epoch: the checkpoint resumes this epoch at step_in_epoch
        assert pos.step_in_epoch == steps, f"epoch {epoch} ended after {pos.step_in_epoch} of {steps} steps: the input pipeline ran dry"
        pos.epoch, pos.step_in_epoch = epoch + 1, 0

    def _should_stop(self, sync: bool) -> bool:
        """Whether every process stops after this step; `sync`: all processes are at a point where they may agree (see the module docstring)."""
        if self.stopping:
            return True
        here = self.stop.requested
        if self.runtime.world_size == 1:
            self.stopping = here
        elif sync:
            self.stopping = self.runtime.any_process(here)
        self.stopped_here = self.stopping and here
        return self.stopping

    def _stop(self) -> None:
        """Checkpoint the step just finished and raise `TrainingStopped` (the CLI exits 128 + signal number)."""
        pos, cfg = self.position, self.config
        signum = self.stop.signum or signal.SIGTERM  # no signal here: another process got one
        fpath = self.save()
        # Why the processes agreed to stop; a signal that arrives during the save (a launcher closing the others) does not change it.
        who = f"stopped by {signal.Signals(signum).name}" if self.stopped_here else "stopped because another process received a stop signal"
        where = f"epoch {pos.epoch + 1}, step {pos.step_in_epoch} of {self.data.steps_per_epoch}" if pos.step_in_epoch else f"end of epoch {pos.epoch}"
        saved = f"checkpoint {fpath}" if fpath else ("checkpoint written by the main process" if cfg.output_dir else "no checkpoint (--output_dir is empty)")
        message = f"{who} after step {pos.global_step} ({where}); {saved}; to continue, rerun the same command with --resume auto --output_dir {cfg.output_dir}"
        log.warning(message)
        raise preemption.TrainingStopped(message, signum, pos.global_step, fpath, cfg.output_dir)

    def fit(self) -> dict[str, float]:
        """Train to `config.epochs`; SIGTERM/SIGINT stop it cleanly (checkpoint, then `TrainingStopped`). The previous handlers are back on return."""
        try:
            with self.stop:
                return self._fit()
        finally:
            if self.profiler is not None:
                self.profiler.close()

    def _fit(self) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        start_epoch = self.position.epoch
        if start_epoch >= cfg.epochs:
            metrics = self.evaluate()  # resumed from the last step (a stop after the final step): nothing to train, report the eval
        for epoch in range(start_epoch, cfg.epochs):
            warm_before = all(self._warm.values())
            self.train_epoch(epoch)
            if self._should_stop(sync=True):
                self._stop()  # before this epoch's eval: a preempted VM has seconds, not an eval's worth (the resumed run skips that eval)
            self._warm["train"] = True
            last = epoch + 1 == cfg.epochs
            if last or (cfg.eval_every_epochs and (epoch + 1) % cfg.eval_every_epochs == 0):
                metrics = self.evaluate()
                self._update_best(metrics)
                self._warm["eval"] = True
            if last or (cfg.save_every_epochs and (epoch + 1) % cfg.save_every_epochs == 0):
                self.save()
                self._warm["save"] = True
            self._report_compiles(epoch, warm_before)
            self.logger.end_epoch(epoch, self.position.global_step)  # summary.csv's row of this epoch
            if not last and self._should_stop(sync=True):
                self._stop()  # a signal during the eval or the save
        self._check_finite()
        log.info("training done in %s", format_duration(time.perf_counter() - t0))
        return metrics

    def _update_best(self, metrics: dict[str, float]) -> None:
        """Best value so far of each metric the task tracks (and of its EMA twin), per eval set (`val/acc1`), in the direction the task gives."""
        for k, v in metrics.items():
            metric = k.rpartition("/")[2].removeprefix("ema_")
            if metric in self.task.tracked and isinstance(v, float) and not math.isnan(v):
                self.best[k] = (max if self.task.tracked[metric] else min)(self.best.get(k, v), v)
