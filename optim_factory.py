"""Optimizers and per-step schedules.

Parameter groups come from timm's optimizer factory: no weight decay on 1-D parameters (norms,
biases), on tokens/embeddings the model lists in `no_weight_decay()`, and optional layer decay from
the model's `group_matcher()`. The schedule is a pure function of the global step and is written
into the param groups before every step (floats on the host; on XLA they enter the graph as
device data, not constants, so a changing LR does not recompile).
"""

import dataclasses
import difflib
import math

import timm.optim
import torch
from torch import nn

from utils import settings


def list_optimizers() -> list[str]:
    return timm.optim.list_optimizers()


def make_optimizer(
    model: nn.Module,
    opt: str,
    lr: float,
    weight_decay: float,
    *,
    momentum: float = 0.9,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """Build `opt` (any timm optimizer name: adamw, sgd, lamb, lion, ...) with the decay rules above."""
    names = list_optimizers()
    if opt.lower() not in names:
        close = difflib.get_close_matches(opt.lower(), names, n=3, cutoff=0.5)
        raise ValueError(f"unknown optimizer {opt!r}; " + (f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(names[:20])}, ..."))
    kwargs = {"momentum": momentum} if opt.lower() in ("sgd", "momentum", "nesterov") else {}
    if betas is not None:
        kwargs["betas"] = tuple(betas)
    if eps is not None:
        kwargs["eps"] = eps
    optimizer = timm.optim.create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, **kwargs)
    for group in optimizer.param_groups:
        # Remember which groups decay, so the WD schedule never turns decay on for norms/biases.
        group["wd_scale"] = 1.0 if group.get("weight_decay", 0.0) > 0 else 0.0
        group.setdefault("lr_scale", 1.0)
    return optimizer


DEFAULT_WARMUP_EPOCHS = 2.0
MAX_DEFAULT_WARMUP_FRAC = 0.2  # a short run keeps 80% of its steps for the decay


def get_default_warmup_epochs(epochs: int) -> float:
    """Warm-up when `--warmup_epochs` is not given: 2 epochs, but at most 20% of the run, so a 1- or 2-epoch run still reaches the peak LR."""
    return min(DEFAULT_WARMUP_EPOCHS, MAX_DEFAULT_WARMUP_FRAC * epochs)


def check_schedule_args(
    *, epochs: int, lr: float, min_lr: float, warmup_epochs: float, warmup_lr: float, weight_decay: float, weight_decay_end: float | None
) -> None:
    """Schedules that would train wrong without a word: ValueError naming the flags and the fix."""
    if warmup_epochs >= epochs:
        raise ValueError(
            f"--warmup_epochs {warmup_epochs:g} >= --epochs {epochs}: the LR would never leave warm-up nor reach --lr; "
            f"pick --warmup_epochs below --epochs (e.g. {get_default_warmup_epochs(epochs):g})"
        )
    if min_lr > lr:
        raise ValueError(f"--min_lr {min_lr:g} > --lr {lr:g}: the cosine 'decay' would raise the LR; pick --min_lr <= --lr")
    if warmup_lr > lr:
        raise ValueError(f"--warmup_lr {warmup_lr:g} > --lr {lr:g}: warm-up would lower the LR; pick --warmup_lr <= --lr")
    if weight_decay_end is not None and weight_decay == 0 and weight_decay_end > 0:
        raise ValueError(
            f"--weight_decay_end {weight_decay_end:g} with --weight_decay 0: parameter groups without decay stay without it; set --weight_decay > 0"
        )


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warmup then cosine decay for LR; optional cosine schedule for weight decay."""

    total_steps: int
    lr: float
    warmup_steps: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    weight_decay: float = 0.0
    weight_decay_end: float | None = None

    def describe(self, steps_per_epoch: int) -> str:
        warm = (
            f"warm-up {self.warmup_steps} steps ({self.warmup_steps / max(1, steps_per_epoch):.3g} epochs) from {self.warmup_lr:g} to {self.lr:g}, "
            if self.warmup_steps
            else f"no warm-up, peak {self.lr:g}, "
        )
        wd = f"weight decay {self.weight_decay:g}" + (f" -> {self.weight_decay_end:g} (cosine)" if self.weight_decay_end is not None else "")
        return f"lr: {warm}cosine to {self.min_lr:g} at step {self.total_steps}; {wd}"

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            # (step + 1) so the very first step is not lr=0: 0 is a special scalar on XLA and would cost an extra compile.
            return self.warmup_lr + (self.lr - self.warmup_lr) * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(step - self.warmup_steps, decay_steps) / decay_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def wd_at(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        t = min(step, self.total_steps) / max(1, self.total_steps)
        return self.weight_decay_end + 0.5 * (self.weight_decay - self.weight_decay_end) * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Write this step's LR and WD into the param groups; returns the base LR."""
        lr, wd = self.lr_at(step), self.wd_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
            if group["wd_scale"]:
                group["weight_decay"] = wd * group["wd_scale"]
        return lr


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optimization` flags that shape the optimizer and its schedules; `epochs` bounds the warm-up."""

    epochs: int = settings.setting(15, range=settings.POSITIVE)
    opt: str = "adamw"
    lr: float = settings.setting(2e-3, range=settings.POSITIVE)
    min_lr: float = settings.setting(1e-5, range=settings.NON_NEGATIVE)
    warmup_epochs: float | None = settings.setting(None, range=settings.NON_NEGATIVE)
    warmup_lr: float = settings.setting(1e-5, range=settings.NON_NEGATIVE)
    weight_decay: float = settings.setting(0.05, range=settings.NON_NEGATIVE)
    weight_decay_end: float | None = settings.setting(None, range=settings.NON_NEGATIVE)
    momentum: float = settings.setting(0.9, range=settings.FRACTION)
    layer_decay: float | None = settings.setting(None, range=settings.Range(0, 1, low_inclusive=False, high_inclusive=True))

    def __post_init__(self):
        settings.check_fields(self)
        if self.warmup_epochs is None:  # resolved here, so args.yaml and the log show the value used
            object.__setattr__(self, "warmup_epochs", get_default_warmup_epochs(self.epochs))
        check_schedule_args(
            epochs=self.epochs,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            weight_decay=self.weight_decay,
            weight_decay_end=self.weight_decay_end,
        )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model, self.opt, self.lr, self.weight_decay, momentum=self.momentum, layer_decay=self.layer_decay)

    def make_schedule(self, steps_per_epoch: int) -> Schedule:
        return Schedule(
            total_steps=self.epochs * steps_per_epoch,
            lr=self.lr,
            warmup_steps=int(self.warmup_epochs * steps_per_epoch),
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
            weight_decay=self.weight_decay,
            weight_decay_end=self.weight_decay_end,
        )
