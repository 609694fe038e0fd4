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

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cells import metrics, scoring
from cells.groups import KEY_EXPORT, seeded_rng
from cells.sets import CellSet, CellSetData, sample_rows
from losses import SetLossConfig, mean_mse
from tasks.base import EvalPartial
from utils import settings

log = logging.getLogger("train")


def _masked_mean(x_b: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Mean over rows with mask True, without host reads; padding rows must hold finite values."""
    total = torch.where(mask_b, x_b, torch.zeros_like(x_b)).sum()
    return total / mask_b.sum().clamp_min(1).to(x_b.dtype)


class CellSetTask:
    """Train with a per-set loss (losses.make_set_loss); evaluate with cell-eval metrics on held-out perturbations."""

    headline = "pds"
    tracked = {"pds": True, "des": True, "mae": False}

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
        target_names: list[str] | None = None,
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
        # Target genes are looked up in the column vocabulary, as cell-eval looks a perturbation up in var (`score_label`).
        self.target_names = list(target_names) if target_names is not None else list(self.pert_names)
        self.target_gene_p = metrics.get_target_gene_indices(self.target_names, self.gene_names)
        self.gene_rank_g = metrics.get_name_rank(self.gene_names)  # DE ties broken as cell-eval breaks them

    def score_label(self, pert: int) -> str:
        """The label of perturbation `pert` in the AnnData cell-eval scores: its target gene's column name when it has one (so cell-eval
        leaves the target out of PDS as the in-loop metric does), else its own label."""
        return self.target_names[pert] if self.target_gene_p[pert] >= 0 else self.pert_names[pert]

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


def make_cellset_task(config: SetLossConfig, cells: CellSetData) -> CellSetTask:
    """The task for `--data_set h5ad`: set loss from the MMD flags, names from the data, and the mean-of-perturbations baseline from the training sets."""
    t0 = time.perf_counter()
    train_pert_mean_g = cells.get_train_pert_mean()
    log.info("cell sets: mean-of-perturbations baseline from the training perturbations of the eval contexts (%.1fs)", time.perf_counter() - t0)
    log.info("set loss: %s", config.describe())
    return CellSetTask(
        config.build(),
        n_perts=cells.n_perts,
        control_index=cells.control_index,
        gene_names=cells.gene_names,
        pert_names=cells.pert_names,
        context_names=cells.context_names,
        train_pert_mean_g=train_pert_mean_g,
        target_names=cells.target_gene_names(),
    )


@dataclasses.dataclass(frozen=True)
class SetRecord:
    """One real eval set on the host: its group, its set loss and its predicted, real and control cells [s, g]."""

    context: int
    pert: int
    set_loss: float
    pred_sg: np.ndarray
    real_sg: np.ndarray
    ctrl_sg: np.ndarray


class CellSetAccumulator:
    """Collects one `SetRecord` per real eval set on the host; `result` groups the records of every process by (context, perturbation).

    Holds every eval cell in host memory (eval sets only). With several processes `tasks.base.reduce_eval` gathers the records of all of them, so the metrics
    cover every held-out group exactly once.
    """

    def __init__(self, task: CellSetTask):
        self.task = task
        self.records: list[SetRecord] = []

    def add(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        mask_b = batch["_mask"].cpu().numpy().astype(bool)
        pred_bsg = outputs["pred"].float().cpu().numpy()
        loss_b = outputs["set_loss"].float().cpu().numpy()
        real_bsg = batch["target"].float().cpu().numpy()
        ctrl_bsg = batch["ctrl"].float().cpu().numpy()
        pert_b = batch["pert"].cpu().numpy()
        context_b = batch["cell_line"].cpu().numpy()
        for i in np.flatnonzero(mask_b):
            self.records.append(SetRecord(int(context_b[i]), int(pert_b[i]), float(loss_b[i]), pred_bsg[i], real_bsg[i], ctrl_bsg[i]))

    def partial(self) -> EvalPartial:
        return EvalPartial(records=list(self.records))

    def result(self, sums: dict[str, float], records: list[SetRecord]) -> dict[str, float]:
        pred_cells: dict[tuple[int, int], list[np.ndarray]] = collections.defaultdict(list)
        real_cells: dict[tuple[int, int], list[np.ndarray]] = collections.defaultdict(list)
        ctrl_cells: dict[int, list[np.ndarray]] = collections.defaultdict(list)
        for r in records:
            ctrl_cells[r.context].append(r.ctrl_sg)
            if r.pert != self.task.control_index:  # control sets count in the set loss only
                pred_cells[(r.context, r.pert)].append(r.pred_sg)
                real_cells[(r.context, r.pert)].append(r.real_sg)
        losses = [r.set_loss for r in records]
        out = {"n_examples": float(len(losses)), "set_loss": float(np.mean(losses)) if losses else float("nan")}
        out["n_perts_eval"] = float(len(pred_cells))
        if pred_cells:
            out.update(self._metrics(pred_cells, real_cells, ctrl_cells))
        return out

    def _metrics(self, pred_by_key: dict, real_by_key: dict, ctrl_by_context: dict) -> dict[str, float]:
        """MAE, PDS and DES of the model and of the two baselines, per context, averaged over every (context, perturbation) pair."""
        task = self.task
        keys = sorted(pred_by_key)
        out: dict[str, float] = {}
        pred_bulk, real_bulk, ctrl_bulk, baseline_pert = [], [], [], []
        pds, des, pds_ctrl, pds_pert = [], [], [], []
        for context in sorted({c for c, _ in keys}):
            perts = [p for c, p in keys if c == context]
            pred_cells = [np.concatenate(pred_by_key[(context, p)]) for p in perts]
            real_cells = [np.concatenate(real_by_key[(context, p)]) for p in perts]
            ctrl_rg = np.concatenate(ctrl_by_context[context])
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
            des.append(
                [
                    metrics.de_overlap(r, p, ctrl_rg, fdr=task.de_fdr, is_log1p=task.is_log1p, tie_rank_g=task.gene_rank_g)
                    for r, p in zip(real_cells, pred_cells, strict=True)
                ]
            )
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


@dataclasses.dataclass(frozen=True)
class GroupPrediction:
    """One held-out (context, perturbation) group at its real size: the model's cells and the real ones, float32 [n, g]."""

    context: int
    pert: int
    pred_ng: np.ndarray
    real_ng: np.ndarray


def _predict_sets(model: nn.Module, cells: CellSetData, runtime, keyed_sets: list[tuple[object, int, CellSet]]) -> dict:
    """Predicted cells of each (key, k, set), in whole batches of the eval shape (masked padding sets, so a compiled step is reused):
    {key: [prediction of set 0, 1, ...] in k order}, each float32 [s, g], with the real `target` cells beside them."""
    pending = sorted(keyed_sets, key=lambda item: item[2].file_idx)  # make_batch groups sets by file (stably): sorted here, its order is ours
    parts: dict = collections.defaultdict(list)
    b = cells.batch_size
    was_training = model.training
    model.eval()
    for start in range(0, len(pending), b):
        chunk = pending[start : start + b]
        # Padding copies the last set, whose file sorts last: make_batch's stable sort keeps every row where it is.
        sets = [x for _, _, x in chunk] + [dataclasses.replace(chunk[-1][2], mask=False)] * (b - len(chunk))
        host = cells.make_batch(sets)
        batch = runtime.to_device(host)
        with torch.no_grad(), runtime.autocast():
            pred_bsg = model(batch["ctrl"], batch["pert"], batch["cell_line"]).float().cpu().numpy()
        for i, (key, k, _) in enumerate(chunk):
            parts[key].append((k, pred_bsg[i], host["target"][i].numpy()))
    model.train(was_training)
    return {key: sorted(v, key=lambda item: item[0]) for key, v in parts.items()}


def _first_cells(parts: list, n: int, which: int) -> np.ndarray:
    return np.concatenate([part[which] for part in parts])[:n]


def predict_held_out(model: nn.Module, task: CellSetTask, cells: CellSetData, runtime) -> list[GroupPrediction]:
    """Predict every held-out group at its real size from seeded control sets (`CellSetData.full_eval_sets`); every process predicts
    every group."""
    full = cells.full_eval_sets()
    parts = _predict_sets(model, cells, runtime, [(gi, k, x) for gi, (_, sets) in enumerate(full) for k, x in enumerate(sets)])
    out = []
    for gi, (group, _) in enumerate(full):
        n = len(group.rows)
        # Clipped at 0: expression (log1p) is never negative, cell-eval refuses negative values and a submission must not have any.
        pred_ng = np.maximum(_first_cells(parts[gi], n, 1), 0.0)
        out.append(GroupPrediction(group.context, group.pert, pred_ng, _first_cells(parts[gi], n, 2)))
    return out


@dataclasses.dataclass(frozen=True)
class CellEvalConfig:
    """Full-data scoring with cell-eval after training (`cells.scoring`): which of its metric profiles, and its DE threads."""

    cell_eval: str = settings.setting("vcc", choices=("off", *scoring.PROFILES))
    cell_eval_threads: int = settings.setting(1, range=settings.AT_LEAST_ONE)

    def __post_init__(self):
        settings.check_fields(self)


def score_with_cell_eval(model: nn.Module, task: CellSetTask, cells: CellSetData, runtime, outdir: str, config: CellEvalConfig) -> dict[str, float]:
    """cell-eval's metrics of the model and of both baselines on every cell of every held-out group (`cell_eval/...` keys), with the
    VCC score of each headline metric against the mean-of-perturbations baseline. Every process predicts; the main one scores."""
    t0 = time.perf_counter()
    preds = predict_held_out(runtime.unwrap(model), task, cells, runtime)
    if not runtime.is_main:
        return {}
    names = cells.context_names
    groups = [scoring.HeldOutGroup(names[p.context], task.score_label(p.pert), p.pred_ng, p.real_ng) for p in preds]
    ctrl = {names[c]: cells.read_control_cells(c) for c in sorted({p.context for p in preds})}
    runs = {
        "model": groups,
        "baseline_ctrl": scoring.baseline_groups(groups, {c: v.mean(axis=0) for c, v in ctrl.items()}),
        "baseline_pert": scoring.baseline_groups(groups, {c: task.train_pert_mean_g.astype(np.float32) for c in ctrl}),
    }
    out: dict[str, float] = {}
    for name, run in runs.items():
        kw = dict(profile=config.cell_eval, num_threads=config.cell_eval_threads)
        res = scoring.score_groups(run, ctrl, cells.gene_names, cells.pert_names[cells.control_index], os.path.join(outdir, name), **kw)
        prefix = "cell_eval/" if name == "model" else f"cell_eval/{name}_"
        out.update({f"{prefix}{k}": v for k, v in res.items() if name == "model" or k in scoring.HEADLINE})
    for k, higher in (("mae", False), ("discrimination_score_l1", True), ("overlap_at_N", True)):
        user, base = out.get(f"cell_eval/{k}"), out.get(f"cell_eval/baseline_pert_{k}")
        if user is not None and base is not None:
            out[f"cell_eval/score_{k}"] = metrics.baseline_normalized_score(user, base, higher_is_better=higher)
    log.info(
        "cell-eval on the full held-out data (%d groups, %d cells; %.0fs): %s",
        int(out["cell_eval/n_perts"]),
        int(out["cell_eval/n_cells"]),
        time.perf_counter() - t0,
        "  ".join(f"{k.removeprefix('cell_eval/')} {v:.4g}" for k, v in out.items() if not k.endswith(("n_perts", "n_cells"))),
    )
    return out


def predict_perturbations(model: nn.Module, cells: CellSetData, runtime, context: str, n_cells: dict[int, int], *, seed: int = 0) -> dict[int, np.ndarray]:
    """`n_cells[p]` predicted cells of perturbation index `p` (the model's vocabulary) in `context`, float32 [n, g], each set of
    `cells_per_set` predicted from its own seeded control set of that context (every file that has it); clipped at 0."""
    ctx = cells.context_names.index(context)
    pools = [(fi, rows) for (fi, c), rows in sorted(cells.control_pools.items()) if c == ctx]
    s = cells.cells_per_set
    keyed = []
    for p, n in n_cells.items():
        for k in range(-(-n // s)):
            fi, pool = pools[k % len(pools)]
            ctrl_s = sample_rows(seeded_rng(seed, KEY_EXPORT, p, k), pool, s)
            keyed.append((p, k, CellSet(fi, p, ctx, ctrl_s, ctrl_s)))
    parts = _predict_sets(model, cells, runtime, keyed)
    return {p: np.maximum(_first_cells(parts[p], n, 1), 0.0) for p, n in n_cells.items()}
