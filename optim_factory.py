"""Optimizers and per-step schedules.

Parameter groups come from timm's optimizer factory: no weight decay on 1-D parameters (norms,
biases), on tokens/embeddings the model lists in `no_weight_decay()`, and optional layer decay from
the model's `group_matcher()`. The schedule is a pure function of the global step and is written
into the param groups before every step (floats on the host; on XLA they enter the graph as
device data, not constants, so a changing LR does not recompile).

Weight decay has two meanings (`--wd_semantics`). `torch`: the optimizer's own `weight_decay`, as
PyTorch/timm define it (AdamW decays by lr(t) x wd, SGD adds wd x p to the gradient). `big_vision`:
decoupled decay as big_vision's optax chain (`add_decayed_weights(wd)` after `scale(lr)` and the
`lr_mults`, then `scale_by_schedule`): each step subtracts wd x m(t) x p, with m(t) = lr(t) / lr the
schedule's multiplier and neither the LR nor the layer-decay scale in it. The optimizer's own
`weight_decay` is then 0 and a step pre-hook shrinks the decaying groups' parameters before the
optimizer's update, which for optimizers whose update does not read the parameters (SGD, Adam,
Lion, ...) is big_vision's update exactly; trust-ratio optimizers (LAMB, LARS) see the decayed
parameters, a relative difference of wd x m(t).

`--opt_fused`: torch's fused kernel of the optimizer (`fused=True`: one kernel per parameter group and device for the whole update, as
timm's `--opt-kwargs fused=True`), for the torch optimizers that have one, on cpu and cuda.
"""

import dataclasses
import difflib
import inspect
import math

import timm.optim
import torch
from torch import nn

from utils import settings

WD_SEMANTICS = ("torch", "big_vision")


def list_optimizers() -> list[str]:
    return timm.optim.list_optimizers()


def get_momentum_optimizers() -> list[str]:
    """The timm optimizers that take a momentum (sgd, momentum, rmsprop, lars, adafactorbv, ...)."""
    return [name for name in list_optimizers() if timm.optim.get_optimizer_info(name).has_momentum]


MOMENTUM_EXAMPLES = ("sgd", "momentum", "nesterov", "rmsproptf", "lars", "adafactorbv", "madgrad")  # named first in the error message


def check_optimizer_args(opt: str, *, momentum: float | None = None, betas: tuple[float, ...] | None = None, eps: float | None = None) -> None:
    """An unknown optimizer, or a momentum, betas or eps it does not take (timm would drop them without a word): ValueError naming the flag and the fix."""
    names = list_optimizers()
    if opt.lower() not in names:
        close = difflib.get_close_matches(opt.lower(), names, n=3, cutoff=0.5)
        raise ValueError(f"unknown optimizer {opt!r}; " + (f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(names[:20])}, ..."))
    info = timm.optim.get_optimizer_info(opt.lower())
    if momentum is not None and not info.has_momentum:
        with_momentum = get_momentum_optimizers()
        betas_hint = " (its first beta, --opt_betas, is the decay of its moving average of gradients)" if info.has_betas else ""
        raise ValueError(
            f"--momentum {momentum:g} does not apply to --opt {opt}, which takes no momentum{betas_hint}; "
            f"drop --momentum, or pick an optimizer with momentum, e.g. {', '.join(n for n in MOMENTUM_EXAMPLES if n in with_momentum)} "
            f"({len(with_momentum)} in all)"
        )
    given = " ".join(f"{b:g}" for b in betas or ())
    if betas is not None and not info.has_betas:
        raise ValueError(
            f"--opt_betas {given} does not apply to --opt {opt}, which takes no betas"
            + "; drop --opt_betas"
            + (" (its --momentum is the decay of its moving average of gradients)" if info.has_momentum else "")
        )
    if betas is not None and len(betas) != info.num_betas:
        raise ValueError(
            f"--opt_betas {given} gives {len(betas)} value{'s' if len(betas) > 1 else ''}; --opt {opt} takes {info.num_betas}, "
            f"e.g. --opt_betas {' '.join(['0.9', '0.999', '0.99'][: info.num_betas])}"
        )
    if eps is not None and not info.has_eps:
        raise ValueError(f"--opt_eps {eps:g} does not apply to --opt {opt}, which takes no eps; drop --opt_eps")


def get_fused_optimizers() -> list[str]:
    """The timm optimizer names that are torch optimizers with a fused kernel (adam, adamw, sgd, momentum, nesterov, adagrad)."""
    names = []
    for name in list_optimizers():
        cls = timm.optim.get_optimizer_info(name).opt_class  # a string for optional packages (apex, bitsandbytes): not torch's
        if isinstance(cls, type) and cls.__module__.startswith("torch.optim") and "fused" in inspect.signature(cls).parameters:
            names.append(name)
    return names


# torch's fused kernels by device; Adagrad's is CPU-only.
FUSED_DEVICES = {"adagrad": ("cpu",)}
FUSED_DEVICES_DEFAULT = ("cpu", "cuda")


def check_fused(opt: str, model: nn.Module | None = None) -> None:
    """--opt_fused with an optimizer that has no fused kernel, or parameters on a device it does not run on: ValueError naming the fix."""
    fused = get_fused_optimizers()
    if opt.lower() not in fused:
        raise ValueError(f"--opt_fused selects torch's fused kernel, which --opt {opt} does not have ({', '.join(fused)} do); drop --opt_fused")
    devices = sorted({p.device.type for p in model.parameters()}) if model is not None else []
    supported = FUSED_DEVICES.get(opt.lower(), FUSED_DEVICES_DEFAULT)
    bad = [d for d in devices if d not in supported]
    if bad:
        where = "on XLA the compiler already fuses the update into the step's graph" if "xla" in bad else f"it runs on {' and '.join(supported)}"
        raise ValueError(f"--opt_fused: torch's fused {opt} kernel does not run on {', '.join(bad)} parameters ({where}); drop --opt_fused")


def make_optimizer(
    model: nn.Module,
    opt: str,
    lr: float,
    weight_decay: float,
    *,
    momentum: float | None = None,
    betas: tuple[float, ...] | None = None,
    eps: float | None = None,
    layer_decay: float | None = None,
    wd_semantics: str = "torch",
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build `opt` (any timm optimizer name: adamw, sgd, lamb, lion, ...) with the decay rules above.

    `momentum`, `betas` and `eps` None: the optimizer's own defaults (timm's momentum 0.9); given, they reach the optimizer or raise (check_optimizer_args).
    `fused`: torch's fused kernel (`check_fused` says where it cannot apply).
    """
    check_optimizer_args(opt, momentum=momentum, betas=betas, eps=eps)
    settings.check_choice("wd_semantics", wd_semantics, WD_SEMANTICS)
    kwargs = {key: value for key, value in (("momentum", momentum), ("betas", betas and tuple(betas)), ("eps", eps)) if value is not None}
    if fused:
        check_fused(opt, model)
        kwargs["fused"] = True
    optimizer = timm.optim.create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, **kwargs)
    for group in optimizer.param_groups:
        # Remember which groups decay, so the WD schedule never turns decay on for norms/biases.
        group["wd_scale"] = 1.0 if group.get("weight_decay", 0.0) > 0 else 0.0
        group.setdefault("lr_scale", 1.0)
        set_group_decay(group, wd_semantics, weight_decay)  # until a Schedule writes each step's value: the peak (multiplier 1)
    # Always registered: a no-op while no group has a decoupled decay, so the Schedule's semantics alone decides (also after a resume across semantics).
    optimizer.register_step_pre_hook(decay_before_step)
    return optimizer


def set_group_decay(group: dict, wd_semantics: str, wd: float) -> None:
    """Write this step's decay `wd` (for big_vision already times the schedule's multiplier) into one param group.

    torch: the optimizer's own `weight_decay`. big_vision: `decoupled_wd`, applied by `decay_before_step`, and the optimizer's own 0 (never twice).
    """
    decay = wd * group["wd_scale"]
    group["weight_decay"], group["decoupled_wd"] = (decay, 0.0) if wd_semantics == "torch" else (0.0, decay)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)` keeping this run's kernel (--opt_fused): torch takes `fused` and `foreach` from the saved groups, so a
    checkpoint of an unfused run would silently turn the fused kernel off (and the reverse on)."""
    kernels = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernel, saved in zip(optimizer.param_groups, kernels, state["param_groups"], strict=True):
        group.update(kernel)
        if bool(saved.get("fused")) == bool(kernel.get("fused")):
            continue
        for p in group["params"]:  # the fused kernels count steps in a float32 tensor on the parameter's device, the others on the host (no sync)
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                optimizer.state[p]["step"] = step.to(p.device, torch.float32) if kernel.get("fused") else step.to("cpu")


@torch.no_grad()
def decay_before_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """Step pre-hook: p <- p x (1 - decoupled_wd) for every parameter the step updates (those with a gradient), as big_vision's `add_decayed_weights`.

    The gradient was taken at the old p, so for optimizers whose update reads only the gradient this equals big_vision's update computed from the old p.
    """
    for group in optimizer.param_groups:
        decay = group.get("decoupled_wd", 0.0)
        if not decay:
            continue
        for p in group["params"]:
            if p.grad is not None:
                p.mul_(1.0 - decay)


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


DECAY_TYPES = ("cosine", "linear")  # after the warm-up: to --min_lr at the last step


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warmup then cosine decay for LR; optional cosine schedule for weight decay, applied as `wd_semantics` says (module docstring)."""

    total_steps: int
    lr: float
    warmup_steps: int = 0
    decay_type: str = "cosine"
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    weight_decay: float = 0.0
    weight_decay_end: float | None = None
    wd_semantics: str = "torch"

    def __post_init__(self):
        settings.check_choice("wd_semantics", self.wd_semantics, WD_SEMANTICS)
        settings.check_choice("sched", self.decay_type, DECAY_TYPES)

    def describe(self, steps_per_epoch: int) -> str:
        warm = (
            f"warm-up {self.warmup_steps} steps ({self.warmup_steps / max(1, steps_per_epoch):.3g} epochs) from {self.warmup_lr:g} to {self.lr:g}, "
            if self.warmup_steps
            else f"no warm-up, peak {self.lr:g}, "
        )
        wd = f"weight decay {self.weight_decay:g}" + (f" -> {self.weight_decay_end:g} (cosine)" if self.weight_decay_end is not None else "")
        wd += " by the optimizer (torch semantics)" if self.wd_semantics == "torch" else f" decoupled, times lr(t) / {self.lr:g} (big_vision semantics)"
        return f"lr: {warm}{self.decay_type} to {self.min_lr:g} at step {self.total_steps}; {wd}"

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            # (step + 1) so the very first step is not lr=0: 0 is a special scalar on XLA and would cost an extra compile.
            return self.warmup_lr + (self.lr - self.warmup_lr) * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(step - self.warmup_steps, decay_steps) / decay_steps
        if self.decay_type == "linear":
            return self.min_lr + (self.lr - self.min_lr) * (1.0 - t)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def wd_at(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        t = min(step, self.total_steps) / max(1, self.total_steps)
        return self.weight_decay_end + 0.5 * (self.weight_decay - self.weight_decay_end) * (1.0 + math.cos(math.pi * t))

    def decay_at(self, step: int) -> float:
        """The decay written into decaying groups: wd_at for torch (the optimizer scales it its way), wd_at x lr_at / lr for big_vision (the multiplier)."""
        if self.wd_semantics == "torch":
            return self.wd_at(step)
        return self.wd_at(step) * self.lr_at(step) / self.lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Write this step's LR and WD into the param groups of an optimizer from `make_optimizer`; returns the base LR."""
        lr, decay = self.lr_at(step), self.decay_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
            set_group_decay(group, self.wd_semantics, decay)  # big_vision: layer decay scales the gradient step only, as its lr_mults
        return lr


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optimization` flags that shape the optimizer and its schedules; `epochs` bounds the warm-up."""

    epochs: int = settings.setting(15, range=settings.POSITIVE)
    opt: str = "adamw"
    lr: float = settings.setting(2e-3, range=settings.POSITIVE)
    min_lr: float = settings.setting(1e-5, range=settings.NON_NEGATIVE)
    warmup_epochs: float | None = settings.setting(None, range=settings.NON_NEGATIVE)
    warmup_steps: int | None = settings.setting(None, range=settings.NON_NEGATIVE)
    warmup_lr: float = settings.setting(1e-5, range=settings.NON_NEGATIVE)
    sched: str = settings.setting("cosine", choices=DECAY_TYPES)
    weight_decay: float = settings.setting(0.05, range=settings.NON_NEGATIVE)
    weight_decay_end: float | None = settings.setting(None, range=settings.NON_NEGATIVE)
    wd_semantics: str = settings.setting(
        "torch", choices=WD_SEMANTICS, hint=" (torch: the optimizer's own weight_decay; big_vision: decoupled, wd x lr(t) / lr)"
    )
    momentum: float | None = settings.setting(None, range=settings.FRACTION)
    opt_betas: list[float] | None = settings.setting(None, range=settings.FRACTION)
    opt_eps: float | None = settings.setting(None, range=settings.POSITIVE)
    layer_decay: float | None = settings.setting(None, range=settings.Range(0, 1, low_inclusive=False, high_inclusive=True))
    opt_fused: bool = False

    def __post_init__(self):
        settings.check_fields(self)
        if self.warmup_steps is not None and self.warmup_epochs is not None:
            raise ValueError(f"--warmup_steps {self.warmup_steps} and --warmup_epochs {self.warmup_epochs:g} both set the warm-up; give one")
        if self.warmup_epochs is None and self.warmup_steps is None:  # resolved here, so args.yaml and the log show the value used
            object.__setattr__(self, "warmup_epochs", get_default_warmup_epochs(self.epochs))
        check_schedule_args(
            epochs=self.epochs,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_epochs=self.warmup_epochs or 0.0,
            warmup_lr=self.warmup_lr,
            weight_decay=self.weight_decay,
            weight_decay_end=self.weight_decay_end,
        )
        check_optimizer_args(self.opt, momentum=self.momentum, betas=self.opt_betas, eps=self.opt_eps)
        if self.opt_fused:
            check_fused(self.opt)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(
            model,
            self.opt,
            self.lr,
            self.weight_decay,
            momentum=self.momentum,
            betas=self.opt_betas,
            eps=self.opt_eps,
            layer_decay=self.layer_decay,
            wd_semantics=self.wd_semantics,
            fused=self.opt_fused,
        )

    def make_schedule(self, steps_per_epoch: int) -> Schedule:
        total_steps = self.epochs * steps_per_epoch
        warmup_steps = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_epochs * steps_per_epoch)
        if self.warmup_steps is not None and warmup_steps >= total_steps:
            raise ValueError(
                f"--warmup_steps {warmup_steps} >= the run's {total_steps} steps ({self.epochs} epochs x {steps_per_epoch}): the LR would never reach "
                f"--lr; pick fewer warm-up steps or more --epochs"
            )
        return Schedule(
            total_steps=total_steps,
            lr=self.lr,
            warmup_steps=warmup_steps,
            decay_type=self.sched,
            warmup_lr=self.warmup_lr,
            min_lr=self.min_lr,
            weight_decay=self.weight_decay,
            weight_decay_end=self.weight_decay_end,
            wd_semantics=self.wd_semantics,
        )
