"""Perturbation-prediction metrics of cell-eval's `vcc` profile (MAE, PDS, DES), the score helper and two baselines.

Host-side numpy, run once per eval (not in the hot loop). Definitions follow cell-eval 0.8.2 and
pdex (see /work/shared/reference/kd_and_perturbation.md, section 3); this is a reimplementation.

Shape letters: p perturbations (evaluated), g genes, q training perturbations, t treated (perturbed)
cells of one perturbation, r reference (control) cells. Expression is log1p-normalised, as cell-eval
expects after its normalize_total + log1p conversion.
"""

# ruff: noqa: F722  (jaxtyping shape strings such as "b s g" are not forward annotations)

import beartype
import numpy as np
import scipy.stats
from jaxtyping import Float, Int, jaxtyped

DE_FDR = 0.05


def _typed(fn):
    return jaxtyped(typechecker=beartype.beartype)(fn)


# ---- pseudobulk metrics ---------------------------------------------------------------------------


@_typed
def pseudobulk_mae(pred_bulk_pg: Float[np.ndarray, "p g"], real_bulk_pg: Float[np.ndarray, "p g"]) -> float:
    """mean_g |pred_bulk_p - real_bulk_p| (absolute levels, not deltas), averaged over p; best 0."""
    return float(np.abs(pred_bulk_pg.astype(np.float64) - real_bulk_pg).mean())


def get_target_gene_indices(pert_names: list[str], gene_names: list[str]) -> np.ndarray:
    """For each perturbation, the index of its target gene in `gene_names`, or -1 when absent."""
    where = {g: i for i, g in enumerate(gene_names)}
    return np.array([where.get(p, -1) for p in pert_names], dtype=np.int64)


@_typed
def pds_per_pert(
    real_bulk_pg: Float[np.ndarray, "p g"],
    pred_bulk_pg: Float[np.ndarray, "p g"],
    real_ctrl_g: Float[np.ndarray, " g"],
    pred_ctrl_g: Float[np.ndarray, " g"],
    target_gene_p: Int[np.ndarray, " p"],
) -> Float[np.ndarray, " p"]:
    """Perturbation Discrimination Score per perturbation (cell-eval `discrimination_score`, l1).

    Signed deltas d_q = real_q - real_ctrl and d^_p = pred_p - pred_ctrl; for each p, the L1 distance
    ||d_q - d^_p|| over the genes except the target gene of p (`target_gene_p[p]`, -1 = keep all) to
    every real q; PDS_p = 1 - rank/N with the 0-based rank of q = p in ascending distance (stable sort
    for ties). Best 1, worst 1/N.
    """
    real_delta_pg = real_bulk_pg.astype(np.float64) - real_ctrl_g
    pred_delta_pg = pred_bulk_pg.astype(np.float64) - pred_ctrl_g
    n_perts, n_genes = real_delta_pg.shape
    out_p = np.zeros(n_perts)
    for p in range(n_perts):
        keep_g = np.ones(n_genes, dtype=bool)
        if target_gene_p[p] >= 0:
            keep_g[target_gene_p[p]] = False
        dist_q = np.abs(real_delta_pg[:, keep_g] - pred_delta_pg[p, keep_g]).sum(axis=1)
        rank = int(np.flatnonzero(np.argsort(dist_q, kind="stable") == p)[0])
        out_p[p] = 1.0 - rank / n_perts
    return out_p


def discrimination_score(
    real_bulk_pg: np.ndarray, pred_bulk_pg: np.ndarray, real_ctrl_g: np.ndarray, pred_ctrl_g: np.ndarray, target_gene_p: np.ndarray
) -> float:
    """Mean PDS over perturbations (see `pds_per_pert`)."""
    return float(pds_per_pert(real_bulk_pg, pred_bulk_pg, real_ctrl_g, pred_ctrl_g, target_gene_p).mean())


# ---- differential expression --------------------------------------------------------------------


@_typed
def mann_whitney_pvalues(treated_tg: Float[np.ndarray, "t g"], ref_rg: Float[np.ndarray, "r g"]) -> Float[np.ndarray, " g"]:
    """Two-sided Mann-Whitney U (Wilcoxon rank-sum) p-value per gene, tie- and continuity-corrected.

    All-tied genes get p = 1 (no evidence); any NaN from degenerate input is also mapped to 1.
    """
    res = scipy.stats.mannwhitneyu(treated_tg, ref_rg, axis=0, method="asymptotic", use_continuity=True, alternative="two-sided")
    return np.nan_to_num(np.asarray(res.pvalue, dtype=np.float64), nan=1.0)


@_typed
def benjamini_hochberg(pvalues_g: Float[np.ndarray, " g"]) -> Float[np.ndarray, " g"]:
    """Benjamini-Hochberg adjusted p-values (FDR), via scipy.stats.false_discovery_control."""
    return scipy.stats.false_discovery_control(pvalues_g, method="bh")


@_typed
def log2_fold_change(treated_tg: Float[np.ndarray, "t g"], ref_rg: Float[np.ndarray, "r g"], is_log1p: bool = True) -> Float[np.ndarray, " g"]:
    """log2(mu_t / mu_ref) on pseudobulk geometric means mu = expm1(mean log1p x), with epsilon 0 (pdex).

    For log1p input mu = expm1(mean X). 0/0 is 0 (unexpressed in both); a one-sided zero gives +-inf,
    which ranks first by |log2FC|, as in cell-eval.
    """
    t_tg, r_rg = treated_tg.astype(np.float64), ref_rg.astype(np.float64)
    if not is_log1p:
        t_tg, r_rg = np.log1p(t_tg), np.log1p(r_rg)
    mu_t, mu_r = np.expm1(t_tg.mean(axis=0)), np.expm1(r_rg.mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc_g = np.log2(mu_t / mu_r)
    return np.where(np.isnan(lfc_g), 0.0, lfc_g)


@_typed
def de_genes(
    treated_tg: Float[np.ndarray, "t g"],
    ref_rg: Float[np.ndarray, "r g"],
    fdr: float = DE_FDR,
    is_log1p: bool = True,
    tie_rank_g: Int[np.ndarray, " g"] | None = None,
) -> Int[np.ndarray, " k"]:
    """Indices of the genes with BH FDR < `fdr`, sorted by |log2FC| descending.

    Ties (common: every gene no control cell expresses has an infinite |log2FC|) go by `tie_rank_g`, ascending (None: gene index).
    `get_name_rank(gene_names)` orders them by gene name, the order of pdex's DE tables, which is how cell-eval 0.8.2 ordered them on
    the symbol-named screens tested here; cell-eval's order among ties is polars' ordinal rank inside a window and does not follow
    the names in every case, so DES can differ from cell-eval's when the top-k cut falls inside a tie of infinite |log2FC|.
    """
    fdr_g = benjamini_hochberg(mann_whitney_pvalues(treated_tg, ref_rg))
    abs_lfc_g = np.abs(log2_fold_change(treated_tg, ref_rg, is_log1p=is_log1p))
    sig_k = np.flatnonzero(fdr_g < fdr)
    tie_k = sig_k if tie_rank_g is None else np.asarray(tie_rank_g)[sig_k]
    return sig_k[np.lexsort((tie_k, -abs_lfc_g[sig_k]))].astype(np.int64)


def get_name_rank(gene_names: list[str]) -> np.ndarray:
    """Each gene's position in the sorted list of names (the order of pdex's and so cell-eval's DE tables), int64 [g]."""
    order = sorted(range(len(gene_names)), key=lambda i: str(gene_names[i]))
    rank_g = np.empty(len(gene_names), np.int64)
    rank_g[order] = np.arange(len(gene_names))
    return rank_g


@_typed
def de_overlap(
    real_tg: Float[np.ndarray, "t g"],
    pred_ug: Float[np.ndarray, "u g"],
    ctrl_rg: Float[np.ndarray, "r g"],
    fdr: float = DE_FDR,
    is_log1p: bool = True,
    tie_rank_g: Int[np.ndarray, " g"] | None = None,
) -> float:
    """DES for one perturbation: |G_real n G_pred[:k]| / k with k = |G_real| (0 when k = 0).

    Real and predicted cells are each tested against the same control cells (cell-eval copies the real
    controls into the prediction); G_pred is truncated to its top k by |log2FC| (ties: see `de_genes`).
    """
    real_k = de_genes(real_tg, ctrl_rg, fdr=fdr, is_log1p=is_log1p, tie_rank_g=tie_rank_g)
    k = real_k.size
    if k == 0:
        return 0.0
    pred_top = de_genes(pred_ug, ctrl_rg, fdr=fdr, is_log1p=is_log1p, tie_rank_g=tie_rank_g)[:k]
    return float(np.intersect1d(real_k, pred_top).size / k)


# ---- score and baselines -----------------------------------------------------------------------


def baseline_normalized_score(user: float, base: float, *, higher_is_better: bool) -> float:
    """cell-eval score of one metric vs the baseline: 1 - user/base (best 0) or (user - base)/(1 - base) (best 1); NaN -> 0, clipped at >= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (np.float64(user) - base) / (1.0 - np.float64(base)) if higher_is_better else 1.0 - np.float64(user) / base
    if np.isnan(score):
        return 0.0
    return float(max(score, 0.0))


@_typed
def mean_of_controls_baseline(ctrl_mean_g: Float[np.ndarray, " g"], n_perts: int) -> Float[np.ndarray, "p g"]:
    """Predict every perturbation's pseudobulk as the control mean of its context (no effect at all)."""
    return np.tile(ctrl_mean_g[None, :], (n_perts, 1))


@_typed
def mean_of_perturbations_baseline(train_bulk_qg: Float[np.ndarray, "q g"], n_perts: int) -> Float[np.ndarray, "p g"]:
    """Predict every perturbation's pseudobulk as the mean of the training perturbations' pseudobulks (cell-eval's baseline)."""
    return np.tile(train_bulk_qg.mean(axis=0, keepdims=True), (n_perts, 1))
