"""The task interface the engine relies on, and the one place eval results are reduced over processes.

A task turns a batch into a loss (train) and into eval outputs; its accumulator collects those
outputs over this process's eval batches. What the accumulator collected is an `EvalPartial`:
device sums (classification counts: added on the device, summed over processes in one collective)
and host records (one per example, e.g. a cell set's predicted and real cells: gathered from every
process). `reduce_eval` merges the partials of all processes the same way for every task, and the
accumulator turns the merged sums and records into metrics. So a metric always covers every eval
example of every process exactly once, whichever task computes it.
"""

import dataclasses
from typing import Any, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class EvalPartial:
    """One process's eval results: device scalars to sum over processes, host records to gather from them."""

    sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    records: list[Any] = dataclasses.field(default_factory=list)


class EvalAccumulator(Protocol):
    def add(self, outputs: dict[str, torch.Tensor], batch: Batch) -> None:
        """One eval batch: the task's `eval_outputs` and the batch itself (padding rows have `_mask` False and must not count)."""

    def partial(self) -> EvalPartial:
        """What this process collected."""

    def result(self, sums: dict[str, float], records: list[Any]) -> dict[str, float]:
        """Metrics from the sums (already totals over processes, read on the host) and the records of every process."""


class Task(Protocol):
    """What the engine calls; nothing else.

    `headline` names the task's main eval metric; `tracked` maps the metrics whose best value the checkpoint keeps (the headline among them) to whether higher
    is better.
    """

    headline: str
    tracked: dict[str, bool]

    def train_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A scalar device loss and a dict of device scalars to log; no host reads."""

    def eval_outputs(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Fixed-shape device tensors for one eval batch."""

    def make_eval_accumulator(self) -> EvalAccumulator: ...


class Reducer(Protocol):
    """The runtime's collectives that eval needs (`utils.device.Runtime` has both)."""

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def gather_objects(self, items: list[Any]) -> list[Any]: ...


def reduce_eval(acc: EvalAccumulator, reducer: Reducer) -> dict[str, float]:
    """Merge every process's partial (the sums summed, the records gathered in process order) and return the task's metrics; every process calls it."""
    partial = acc.partial()
    sums = {k: float(reducer.reduce_sum(v).item()) for k, v in sorted(partial.sums.items())}
    return acc.result(sums, reducer.gather_objects(partial.records))
