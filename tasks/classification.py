"""Image classification: cross-entropy (hard or soft targets) and masked top-1/top-5 eval."""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from tasks.base import EvalPartial
from utils import settings
from utils.device import Runtime

LOSSES = ("softmax_xent", "sigmoid_xent")


@dataclasses.dataclass(frozen=True)
class ClassificationConfig:
    label_smoothing: float = settings.setting(0.0, range=settings.FRACTION)
    loss: str = settings.setting("softmax_xent", choices=LOSSES)

    def __post_init__(self):
        settings.check_fields(self)


class ClassificationTask:
    """Cross-entropy on `image` -> `label` (int64 [b]) or `labels` (float [b, c]: pp `onehot`, mixup, or multi-hot like ImageNet ReaL).

    `loss`: softmax_xent (softmax cross-entropy) or sigmoid_xent (big_vision's: binary cross-entropy summed over the classes, mean
    over the batch). Eval counts a hit when a top-k class is among the example's labels, so multi-hot labels give ReaL accuracy.
    """

    headline = "acc1"
    tracked = {"acc1": True, "acc5": True}  # best values kept in the checkpoint (higher is better)

    def __init__(self, runtime: Runtime, label_smoothing: float = 0.0, loss: str = "softmax_xent"):
        settings.check_choice("loss", loss, LOSSES)
        self.runtime = runtime
        self.label_smoothing = label_smoothing
        self.loss = loss

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["labels"] if "labels" in batch else batch["label"]

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_bc = model(batch["image"]).float()
        if self.loss == "softmax_xent":
            return F.cross_entropy(logits_bc, self.targets(batch), label_smoothing=self.label_smoothing), {}
        return sigmoid_xent(logits_bc, self.targets(batch), self.label_smoothing).mean(), {}

    def eval_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits_bc = model(batch["image"]).float()
        target = batch["labels"] if "labels" in batch else batch["label"]
        return classification_sums(logits_bc, target, batch["_mask"], self.loss)

    def make_eval_accumulator(self) -> "SumAccumulator":
        return SumAccumulator(self.runtime)


def sigmoid_xent(logits_bc: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-example binary cross-entropy summed over the classes (big_vision's sigmoid_xent before its batch mean); int labels become one-hot."""
    n_classes = logits_bc.shape[1]
    target_bc = F.one_hot(target.long(), n_classes).float() if target.ndim == 1 else target.float()
    if label_smoothing:
        target_bc = target_bc * (1.0 - label_smoothing) + label_smoothing / n_classes
    return F.binary_cross_entropy_with_logits(logits_bc, target_bc, reduction="none").sum(dim=1)


def classification_sums(logits_bc: torch.Tensor, target: torch.Tensor, mask_b: torch.Tensor, loss: str = "softmax_xent") -> dict[str, torch.Tensor]:
    """Masked sums for one batch: padding rows count nowhere, so the last padded batch is exact.

    `target`: int labels [b], or float labels [b, c] (one-hot or multi-hot): a top-k class is a hit when its label is > 0, and rows
    without any label are left out, as big_vision's classification evaluator does.
    """
    k = min(5, logits_bc.shape[1])
    top_bk = logits_bc.topk(k, dim=1).indices
    hit_bk = (top_bk == target[:, None]) if target.ndim == 1 else (target.gather(1, top_bk) > 0)
    maskf_b = mask_b.float()
    if target.ndim == 2:
        maskf_b = maskf_b * (target.amax(dim=1) > 0).float()  # as big_vision's evaluator: an example without labels (ReaL has some) is not counted
    loss_b = (
        F.cross_entropy(logits_bc, target if target.ndim == 1 else target.float(), reduction="none")
        if loss == "softmax_xent"
        else sigmoid_xent(logits_bc, target)
    )
    return {
        "correct1": (hit_bk[:, 0].float() * maskf_b).sum(),
        "correct5": (hit_bk.any(dim=1).float() * maskf_b).sum(),
        "loss_sum": (loss_b * maskf_b).sum(),
        "count": maskf_b.sum(),
    }


class SumAccumulator:
    """Adds per-batch device sums on the device; `tasks.base.reduce_eval` sums them over processes and reads them once."""

    def __init__(self, runtime: Runtime | None = None):
        self.totals: dict[str, torch.Tensor] = {}

    def add(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        for k, v in outputs.items():
            self.totals[k] = self.totals[k] + v if k in self.totals else v

    def partial(self) -> EvalPartial:
        return EvalPartial(sums=dict(self.totals))

    def result(self, sums: dict[str, float], records: list) -> dict[str, float]:
        totals = dict(sums)
        count = max(totals.pop("count", 0.0), 1.0)
        out = {"n_examples": count}
        if "correct1" in totals:
            out.update(acc1=100.0 * totals["correct1"] / count, acc5=100.0 * totals["correct5"] / count, loss=totals["loss_sum"] / count)
        return out
