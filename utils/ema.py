"""Model EMA: an exponential moving average of a model's weights, updated inside the train step.

The same update as timm's `ModelEmaV3` (parameters and floating buffers lerp towards the model,
integer buffers are copied, one `_foreach_lerp_` for all of them), without what does not fit a
compiled XLA step: timm's EMA creates a `torch.Generator` on the model's device for bf16 stochastic
rounding, which the XLA device does not support, and its warm-up decay returns 0.0 on the first steps
(a special scalar on XLA: an extra compile). Here the decay is one Python float for the whole run, so
the update is a fixed part of the step's graph and needs no host sync. The EMA weights are kept in
the model's dtype (fp32 here: params stay fp32 under bf16 autocast).
"""

import copy
import dataclasses

import torch
from torch import nn

from utils import settings


def check_decay(decay: float) -> None:
    if not 0.0 < decay < 1.0:
        raise ValueError(f"--model_ema_decay must be in (0, 1), got {decay}")


@dataclasses.dataclass(frozen=True)
class EmaConfig:
    """`--model_ema` (keep an EMA of the weights), its decay per step, and whether eval also runs on the EMA weights."""

    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_eval: bool = False

    def __post_init__(self):
        settings.check_fields(self)
        check_decay(self.model_ema_decay)
        if self.model_ema_eval and not self.model_ema:
            raise ValueError("--model_ema_eval needs --model_ema (there are no EMA weights to evaluate)")


class ModelEma(nn.Module):
    """`ema = decay * ema + (1 - decay) * model` after every optimizer step; `module` is a frozen copy in eval mode."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        check_decay(decay)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_sd, model_sd = self.module.state_dict(), model.state_dict()
        assert ema_sd.keys() == model_sd.keys(), "the EMA copy and the model have different state_dict keys"
        ema_f, model_f = [], []
        for k, ema_v in ema_sd.items():
            if ema_v.is_floating_point():
                ema_f.append(ema_v)
                model_f.append(model_sd[k].detach())
            else:
                ema_v.copy_(model_sd[k])
        torch._foreach_lerp_(ema_f, model_f, weight=1.0 - self.decay)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy the model's weights (start the average over, e.g. when resuming from a checkpoint without EMA)."""
        self.module.load_state_dict(model.state_dict())

    def train(self, mode: bool = True) -> "ModelEma":
        # The averaged copy always runs in eval mode (BN uses its averaged running stats, no dropout).
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
