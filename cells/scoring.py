"""Score held-out predictions with ArcInstitute's cell-eval itself, on the full held-out data.

In-loop metrics see one sampled set per held-out group; this module scores every cell of every held-out group instead. Per context, a
real AnnData (each held-out group's real cells plus every control cell of the context) and a predicted one (the model's cells, as
many per group as the real group has, plus the same real control cells, as a Virtual Cell Challenge submission carries them) go to
`cell_eval.MetricsEvaluator`; its per-perturbation results are averaged over every (context, perturbation) pair, like the in-loop
metrics. Baselines go through exactly the same path: mean of controls (every predicted cell is the context's control mean) and
mean of perturbations (every predicted cell is the training perturbations' mean).

cell-eval names: `mae` (pseudobulk MAE), `discrimination_score_l1` (PDS), `overlap_at_N` (DES), plus its other metrics with the
`full` profile. cell-eval, with scanpy and pdex, is imported only when scoring runs.
"""

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

PROFILES = ("vcc", "minimal", "full")
HEADLINE = ("mae", "discrimination_score_l1", "overlap_at_N")  # the Virtual Cell Challenge's three


@dataclasses.dataclass(frozen=True)
class HeldOutGroup:
    """One held-out (context, perturbation) group: predicted and real cells [n, g] on the same (transformed) scale."""

    context: str
    pert: str
    pred_ng: np.ndarray
    real_ng: np.ndarray


def build_anndata_pair(groups: Sequence[HeldOutGroup], ctrl_ng: np.ndarray, gene_names: list[str], control_label: str, pert_col: str = "target_gene"):
    """(real, pred) AnnData of one context: the groups' real / predicted cells, each followed by the same real control cells."""
    import anndata
    import pandas as pd

    labels = [g.pert for g in groups for _ in range(len(g.real_ng))] + [control_label] * len(ctrl_ng)
    categories = [control_label] + sorted({g.pert for g in groups})
    obs = pd.DataFrame({pert_col: pd.Categorical(labels, categories=categories)}, index=[f"cell{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=list(gene_names))
    real = np.concatenate([g.real_ng for g in groups] + [ctrl_ng]).astype(np.float32)
    pred_parts = [g.pred_ng for g in groups]
    if any(len(p) != len(g.real_ng) for p, g in zip(pred_parts, groups, strict=True)):
        raise ValueError("every held-out group needs as many predicted cells as it has real cells")
    pred = np.concatenate(pred_parts + [ctrl_ng]).astype(np.float32)
    return anndata.AnnData(X=real, obs=obs.copy(), var=var.copy()), anndata.AnnData(X=pred, obs=obs.copy(), var=var.copy())


def run_cell_eval(real, pred, control_label: str, outdir: str, *, pert_col: str = "target_gene", profile: str = "full", num_threads: int = 1):
    """cell-eval's per-perturbation results (a polars DataFrame with a `perturbation` column) for one (real, pred) pair."""
    from cell_eval import MetricsEvaluator

    if profile not in PROFILES:
        raise ValueError(f"cell-eval profile {profile!r} is not one of {', '.join(PROFILES)}")
    os.makedirs(outdir, exist_ok=True)
    evaluator = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert=control_label, pert_col=pert_col, num_threads=num_threads, outdir=outdir)
    results, _ = evaluator.compute(profile=profile, write_csv=True)
    return results


def mean_over_perturbations(per_context: Sequence) -> dict[str, float]:
    """The mean of every numeric cell-eval metric over all (context, perturbation) rows of the per-context result tables."""
    import polars as pl

    table = pl.concat(list(per_context), how="diagonal_relaxed")
    numeric = [c for c, t in table.schema.items() if c != "perturbation" and t.is_numeric()]
    means = table.select([pl.col(c).cast(pl.Float64).mean().alias(c) for c in numeric]).row(0, named=True)
    return {k: float(v) for k, v in means.items() if v is not None}


def score_groups(
    groups: Sequence[HeldOutGroup],
    ctrl_by_context: dict[str, np.ndarray],
    gene_names: list[str],
    control_label: str,
    outdir: str,
    *,
    profile: str = "full",
    num_threads: int = 1,
) -> dict[str, float]:
    """cell-eval's metrics over every held-out group of every context (per-perturbation results averaged over all pairs)."""
    tables = []
    for context in sorted({g.context for g in groups}):
        in_context = [g for g in groups if g.context == context]
        real, pred = build_anndata_pair(in_context, ctrl_by_context[context], gene_names, control_label)
        tables.append(run_cell_eval(real, pred, control_label, os.path.join(outdir, str(context)), profile=profile, num_threads=num_threads))
    out = mean_over_perturbations(tables)
    out["n_perts"] = float(len(groups))
    out["n_cells"] = float(sum(len(g.real_ng) for g in groups))
    return out


def baseline_groups(groups: Sequence[HeldOutGroup], fill_by_context: dict[str, np.ndarray]) -> list[HeldOutGroup]:
    """The same groups with every predicted cell replaced by one profile per context (a baseline predicts no cell-to-cell variation)."""
    return [dataclasses.replace(g, pred_ng=np.broadcast_to(fill_by_context[g.context], g.real_ng.shape).astype(np.float32)) for g in groups]
