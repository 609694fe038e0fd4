"""Test-only models that misbehave on purpose, registered on import as `tests.fault_models`
(in pytest and in `python -c "import tests.fault_models, main; ..."` subprocesses).

All are `tiny_cnn` (same parameters, same initialisation for the same seed), so their checkpoints compare with each other:
- `slow_tiny_cnn`: sleeps `$FAULT_SLOW_STEP_S` seconds (default 0) in every train-mode forward, so a test can signal a subprocess mid-epoch.
- `inf_tiny_cnn`: returns inf logits from its `INF_FROM_FORWARD`-th train-mode forward on (a diverging run).
- `sigint_tiny_cnn`: sends SIGINT to its own process during its `SIGINT_AT_FORWARD`-th train-mode forward (a Ctrl-C in the middle of a step).
- `sigterm_rank1_tiny_cnn`: sends SIGTERM to its own process during its `SIGINT_AT_FORWARD`-th train-mode forward, on torchrun rank 1 only (one process of
  several preempted).
"""

import os
import signal
import time

import torch

from models.registry import register_model
from models.small_cnn import SmallCNN

INF_FROM_FORWARD = 5
SIGINT_AT_FORWARD = 3


class FaultyTinyCNN(SmallCNN):
    def __init__(self, fault: str, **kwargs):
        super().__init__(widths=(16, 32), **kwargs)
        self.fault = fault
        self.n_train_forwards = 0

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        logits_bc = super().forward(x_bchw)
        if not self.training:
            return logits_bc
        self.n_train_forwards += 1
        if self.fault == "slow":
            time.sleep(float(os.environ.get("FAULT_SLOW_STEP_S", "0")))
        elif self.fault == "inf" and self.n_train_forwards >= INF_FROM_FORWARD:
            logits_bc = logits_bc * float("inf")
        elif self.fault == "sigint" and self.n_train_forwards == SIGINT_AT_FORWARD:
            signal.raise_signal(signal.SIGINT)
        elif self.fault == "sigterm_rank1" and self.n_train_forwards == SIGINT_AT_FORWARD and os.environ.get("RANK") == "1":
            signal.raise_signal(signal.SIGTERM)
        return logits_bc


@register_model
def slow_tiny_cnn(**kwargs) -> FaultyTinyCNN:
    return FaultyTinyCNN("slow", **kwargs)


@register_model
def inf_tiny_cnn(**kwargs) -> FaultyTinyCNN:
    return FaultyTinyCNN("inf", **kwargs)


@register_model
def sigint_tiny_cnn(**kwargs) -> FaultyTinyCNN:
    return FaultyTinyCNN("sigint", **kwargs)


@register_model
def sigterm_rank1_tiny_cnn(**kwargs) -> FaultyTinyCNN:
    return FaultyTinyCNN("sigterm_rank1", **kwargs)
