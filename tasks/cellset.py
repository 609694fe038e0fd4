"""Cell-set perturbation prediction: a set loss for training, cell-eval metrics (MAE, PDS, DES) for eval.

Batches follow the cell-set contract: `ctrl` and `target` float32 [b, s, g], `pert` and `cell_line`
int64 [b], `_mask` bool [b]. The model is called as `model(ctrl_bsg, pert_b, cell_line_b)`.

Eval groups cells by (context, perturbation): each pseudobulk is the mean of all predicted (or real)
cells of that pair across its sets, and the controls of a context are all `ctrl` cells of that context
seen in the eval sets. PDS ranks a perturbation among the perturbations of the same context (with one
context this is exactly cell-eval's definition); MAE, PDS and DES are then averaged over all pairs.
Sets whose perturbation is the control (`control_index`) count in the set loss but not in the metrics.

Shape letters: b batch, s cells in a set, g genes, p perturbations.
"""

import argparse
import collections
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from losses import make_set_loss, mean_mse
from utils import metrics
from utils.cell_sets import CellSetData

log = logging.getLogger("train")


def _masked_mean(x_b: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Mean over rows with mask True, without host reads; padding rows must hold finite values."""
    total = torch.where(mask_b, x_b, torch.zeros_like(x_b)).sum()
    return total / mask_b.sum().clamp_min(1).to(x_b.dtype)


class CellSetTask:
    """Train with a per-set loss (losses.make_set_loss); evaluate with cell-eval metrics on held-out perturbations."""

    def __init__(
        self,
        set_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        n_perts: int,
        control_index: int,
        gene_names: list[str],
        pert_names: list[str],
        context_names: list[str] | None = None,
        train_pert_mean_g: np.ndarray | None = None,
        de_fdr: float = metrics.DE_FDR,
        is_log1p: bool = True,
    ):
        if len(pert_names) != n_perts:
            raise ValueError(f"pert_names has {len(pert_names)} names but n_perts={n_perts}")
        if not 0 <= control_index < n_perts:
            raise ValueError(f"control_index={control_index} is outside [0, {n_perts})")
        if train_pert_mean_g is not None and np.shape(train_pert_mean_g) != (len(gene_names),):
            raise ValueError(f"train_pert_mean_g must have shape ({len(gene_names)},) like gene_names, got {np.shape(train_pert_mean_g)}")
        self.set_loss = set_loss
        self.n_perts = n_perts
        self.control_index = control_index
        self.gene_names = list(gene_names)
        self.pert_names = list(pert_names)
        self.context_names = None if context_names is None else list(context_names)
        self.train_pert_mean_g = None if train_pert_mean_g is None else np.asarray(train_pert_mean_g, dtype=np.float64)
        self.de_fdr = de_fdr
        self.is_log1p = is_log1p
        self.target_gene_p = metrics.get_target_gene_indices(self.pert_names, self.gene_names)

    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["ctrl"], batch["pert"], batch["cell_line"]).float()

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred_bsg = self.predict(model, batch)
        mask_b = batch["_mask"]
        loss = _masked_mean(self.set_loss(pred_bsg, batch["target"]), mask_b)
        mse_b = mean_mse(pred_bsg.detach(), batch["target"])
        return loss, {"mse_mean": _masked_mean(mse_b, mask_b)}

    def eval_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred_bsg = self.predict(model, batch)
        return {"pred": pred_bsg, "set_loss": self.set_loss(pred_bsg, batch["target"])}

    def make_eval_accumulator(self) -> "CellSetAccumulator":
        return CellSetAccumulator(self)


def make_set_loss_from_args(args: argparse.Namespace):
    """The set loss named by `--set_loss` and the MMD flags (raises ValueError on a bad combination)."""
    return make_set_loss(
        args.set_loss,
        estimator=args.mmd_estimator,
        sigmas=args.mmd_sigmas,
        blur=args.sinkhorn_blur,
        sinkhorn_iters=args.sinkhorn_iters,
        state_parity=args.set_loss_state_parity,
        mean_mse_weight=args.mean_mse_weight,
    )


def make_cellset_task(args: argparse.Namespace, cells: CellSetData) -> CellSetTask:
    """The task for `--data_set h5ad`: set loss from the MMD flags, names from the data, and the mean-of-perturbations baseline from the training sets."""
    set_loss = make_set_loss_from_args(args)
    t0 = time.perf_counter()
    train_pert_mean_g = cells.get_train_pert_mean()
    log.info("cell sets: mean-of-perturbations baseline from the training perturbations of the eval contexts (%.1fs)", time.perf_counter() - t0)
    log.info("set loss: %s (%s)%s", args.set_loss, args.mmd_estimator, f" + {args.mean_mse_weight:g} x set-mean MSE" if args.mean_mse_weight > 0 else "")
    return CellSetTask(
        set_loss,
        n_perts=cells.n_perts,
        control_index=cells.control_index,
        gene_names=cells.gene_names,
        pert_names=cells.pert_names,
        context_names=cells.context_names,
        train_pert_mean_g=train_pert_mean_g,
    )


class CellSetAccumulator:
    """Collects predicted and real cells per (context, perturbation) on the host; metrics at the end.

    Holds every eval cell in host memory (eval sets only). It sees this process's eval shard; with
    several processes the engine must gather the sets (or evaluate on one process) for the metrics to
    cover all perturbations.
    """

    def __init__(self, task: CellSetTask):
        self.task = task
        self.set_losses: list[float] = []
        self.pred_cells: dict[tuple[int, int], list[np.ndarray]] = collections.defaultdict(list)
        self.real_cells: dict[tuple[int, int], list[np.ndarray]] = collections.defaultdict(list)
        self.ctrl_cells: dict[int, list[np.ndarray]] = collections.defaultdict(list)

    def add(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        mask_b = batch["_mask"].cpu().numpy().astype(bool)
        pred_bsg = outputs["pred"].float().cpu().numpy()
        loss_b = outputs["set_loss"].float().cpu().numpy()
        real_bsg = batch["target"].float().cpu().numpy()
        ctrl_bsg = batch["ctrl"].float().cpu().numpy()
        pert_b = batch["pert"].cpu().numpy()
        context_b = batch["cell_line"].cpu().numpy()
        for i in np.flatnonzero(mask_b):
            context, pert = int(context_b[i]), int(pert_b[i])
            self.set_losses.append(float(loss_b[i]))
            self.ctrl_cells[context].append(ctrl_bsg[i])
            if pert == self.task.control_index:
                continue
            self.pred_cells[(context, pert)].append(pred_bsg[i])
            self.real_cells[(context, pert)].append(real_bsg[i])

    def result(self) -> dict[str, float]:
        task = self.task
        out = {"n_examples": float(len(self.set_losses)), "set_loss": float(np.mean(self.set_losses)) if self.set_losses else float("nan")}
        keys = sorted(self.pred_cells)
        out["n_perts_eval"] = float(len(keys))
        if not keys:
            return out

        pred_bulk, real_bulk, ctrl_bulk, baseline_pert = [], [], [], []
        pds, des, pds_ctrl, pds_pert = [], [], [], []
        for context in sorted({c for c, _ in keys}):
            perts = [p for c, p in keys if c == context]
            pred_cells = [np.concatenate(self.pred_cells[(context, p)]) for p in perts]
            real_cells = [np.concatenate(self.real_cells[(context, p)]) for p in perts]
            ctrl_rg = np.concatenate(self.ctrl_cells[context])
            ctrl_g = ctrl_rg.mean(axis=0).astype(np.float64)
            pred_pg = np.stack([c.mean(axis=0) for c in pred_cells]).astype(np.float64)
            real_pg = np.stack([c.mean(axis=0) for c in real_cells]).astype(np.float64)
            target_p = task.target_gene_p[perts]
            ctrl_pg = metrics.mean_of_controls_baseline(ctrl_g, len(perts))

            pred_bulk.append(pred_pg)
            real_bulk.append(real_pg)
            ctrl_bulk.append(ctrl_pg)
            # cell-eval copies the real controls into the prediction: both sides share one control mean.
            pds.append(metrics.pds_per_pert(real_pg, pred_pg, ctrl_g, ctrl_g, target_p))
            pds_ctrl.append(metrics.pds_per_pert(real_pg, ctrl_pg, ctrl_g, ctrl_g, target_p))
            des.append([metrics.de_overlap(r, p, ctrl_rg, fdr=task.de_fdr, is_log1p=task.is_log1p) for r, p in zip(real_cells, pred_cells, strict=True)])
            if task.train_pert_mean_g is not None:
                base_pg = metrics.mean_of_perturbations_baseline(task.train_pert_mean_g[None, :], len(perts))
                baseline_pert.append(base_pg)
                pds_pert.append(metrics.pds_per_pert(real_pg, base_pg, ctrl_g, ctrl_g, target_p))

        real_pg = np.concatenate(real_bulk)
        out["mae"] = metrics.pseudobulk_mae(np.concatenate(pred_bulk), real_pg)
        out["pds"] = float(np.concatenate(pds).mean())
        out["des"] = float(np.concatenate([np.asarray(d, dtype=np.float64) for d in des]).mean())
        out["baseline_ctrl_mae"] = metrics.pseudobulk_mae(np.concatenate(ctrl_bulk), real_pg)
        out["baseline_ctrl_pds"] = float(np.concatenate(pds_ctrl).mean())
        if task.train_pert_mean_g is None:
            return out
        out["baseline_pert_mae"] = metrics.pseudobulk_mae(np.concatenate(baseline_pert), real_pg)
        out["baseline_pert_pds"] = float(np.concatenate(pds_pert).mean())
        # cell-eval's score: each metric normalised by the mean-of-perturbations baseline (DES needs cells, so it is left out here).
        out["score_mae"] = metrics.baseline_normalized_score(out["mae"], out["baseline_pert_mae"], higher_is_better=False)
        out["score_pds"] = metrics.baseline_normalized_score(out["pds"], out["baseline_pert_pds"], higher_is_better=True)
        return out
