"""Model FLOPs per training step, counted once at start-up, and MFU against a peak table per chip.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` around one forward and backward of the train loss on a copy of the
model on the meta device: shapes only, so no compute, no memory and no change to the real model (its weights, gradients and
BatchNorm statistics). The counter counts matmuls, convolutions and attention (elementwise ops, norms and softmax count 0, as in
every analytic MFU formula); for a ViT it equals the hand count 3 x forward - the patch embedding's input gradient (the image
needs none): `tests/test_observability.py` checks it within 2%. `flops_per_step = flops_per_example x global batch`.

MFU = flops_per_step x steps/s / (devices x peak per device), with the bf16 dense peak of the chip (`PEAK_TFLOPS`, or
`--peak_tflops`). Unknown chips (and CPUs) have no MFU: the key is simply absent. The peak is the bf16 one whatever
`--precision` is, so an fp32 run's MFU says how far it is from what the chip could do in bf16.
"""

import copy
import itertools
import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

# bf16 dense peak TFLOP/s per device (one PJRT device is one chip on v4, v5e, v5p, v6e), matched as a prefix of the device kind, longest first.
PEAK_TFLOPS = {
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,  # v5p reports "TPU v5"
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
    "NVIDIA A100": 312.0,
    "NVIDIA H100": 989.0,  # SXM; PCIe and NVL cards are slower (756, 835): pass --peak_tflops for those
    "NVIDIA H200": 989.0,
}


def get_peak_tflops(device_kind: str | None) -> float | None:
    """The table's entry for `device_kind` (the longest matching prefix), else None."""
    if not device_kind:
        return None
    matches = [k for k in PEAK_TFLOPS if device_kind.startswith(k)]
    return PEAK_TFLOPS[max(matches, key=len)] if matches else None


def to_meta(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers live on the meta device (nothing is copied but the module structure)."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def batch_to_meta(batch: dict, n: int) -> dict[str, torch.Tensor]:
    """The tensors of `batch`, first `n` rows, as meta tensors."""
    return {k: torch.empty_like(v[:n], device="meta") for k, v in batch.items() if isinstance(v, torch.Tensor)}


def count_train_flops(model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor], batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of `loss_fn(model, batch).backward()` (see the module doc); `model` and `batch` should be on the meta device."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch).backward()
    return int(counter.get_total_flops())


def count_flops_per_example(model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor], batch: dict, n: int = 2) -> float:
    """Train-step FLOPs per example, on a meta copy of `model` and the first `n` rows of `batch`."""
    meta_model = to_meta(model)
    meta_model.train()
    return count_train_flops(meta_model, loss_fn, batch_to_meta(batch, n)) / n


class MfuStats:
    """`read` -> `perf/model_tflops_per_device` and, when the peak is known, `perf/mfu_pct`."""

    def __init__(self, flops_per_step: float, n_devices: int, peak_tflops: float | None):
        self.flops_per_step, self.n_devices, self.peak_tflops = flops_per_step, n_devices, peak_tflops

    def read(self, step: int, steps_per_s: float) -> dict[str, float]:
        if math.isnan(steps_per_s) or self.flops_per_step <= 0:
            return {}
        tflops = self.flops_per_step * steps_per_s / self.n_devices / 1e12
        out = {"perf/model_tflops_per_device": tflops}
        if self.peak_tflops:
            out["perf/mfu_pct"] = 100.0 * tflops / self.peak_tflops
        return out


def make_mfu_stats(flops_per_example: float, global_batch: int, n_devices: int, device_kind: str | None, peak_override: float | None) -> MfuStats:
    """The MFU source of a run, and one start-up line with the count, the chip and its peak (or why there is no MFU)."""
    flops_per_step = flops_per_example * global_batch
    peak = peak_override or get_peak_tflops(device_kind)
    where = f"{device_kind or 'this device'}" + (" (--peak_tflops)" if peak_override else "")
    log.info(
        "flops: %.4g GFLOP per example (forward + backward), %.4g TFLOP per step of %d; %s",
        flops_per_example / 1e9,
        flops_per_step / 1e12,
        global_batch,
        f"MFU against {peak:g} TFLOP/s (bf16 dense) per device of {where}, {n_devices} device(s)"
        if peak
        else f"no MFU: no peak known for {where} (--peak_tflops sets one)",
    )
    return MfuStats(flops_per_step, n_devices, peak)
