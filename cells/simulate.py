"""Write a seeded, VCC-style perturbation `.h5ad` with known effects, streamed in chunks of cells.

Counts are negative binomial (gamma-Poisson) around per-gene log-normal means, shifted per context and per batch, scaled by a per-cell size factor, and moved by
each perturbation's sparse log2 fold changes (the target gene knocked down plus a few genes up or down). A perturbation's fold changes are shared by all
contexts; with `context_effect_sd` > 0 each context scales each of them by its own log-normal factor, so a perturbation seen in one context predicts, but does
not equal, its effect in another. Controls are labelled `non-targeting`. The true effects are stored in `uns['true_effects']` so tests and docs can check that
they are recovered.

`obs`, `var` and `uns` are written by anndata; `X` is appended with h5py chunk by chunk (CSR arrays grow as resizable datasets, dense X is a preallocated
contiguous dataset), so a 200k x 2k file needs only one chunk of cells in RAM. `anndata.read_h5ad` reads the result like any other file.

The command line is `python -m tools.simulate_h5ad OUT.h5ad --n_cells 200000 --n_genes 2000 --seed 0`.
"""

import logging
import os

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse

log = logging.getLogger(__name__)

CONTROL_LABEL = "non-targeting"
TARGET_SUM = 1e4
# HDF5 chunk of the CSR arrays: 32k elements (128 KiB of float32), close to the ~100 KB chunks anndata writes.
CSR_CHUNK_ELEMS = 1 << 15


def get_gene_symbols(n_genes: int) -> list[str]:
    return [f"GENE{i + 1}" for i in range(n_genes)]


def simulate_h5ad(
    path: str,
    *,
    n_cells: int = 20_000,
    n_genes: int = 2_000,
    n_contexts: int = 2,
    n_perts: int = 48,
    control_frac: float = 0.1,
    seed: int = 0,
    sparse: bool = True,
    log1p: bool = False,
    chunk_cells: int = 8_192,
    n_batches: int = 3,
    genes_per_effect: int = 8,
    context_col: str = "cell_line",
    context_effect_sd: float = 0.0,
    umis_per_cell: float | None = None,
) -> str:
    """Write the file and return its path. Same arguments and seed give the same file."""
    assert 0 < n_perts < n_genes, f"need 0 < n_perts ({n_perts}) < n_genes ({n_genes}): each perturbation targets a distinct gene"
    assert 0.0 < control_frac < 1.0, f"control_frac must be in (0, 1), got {control_frac}"
    rng = np.random.default_rng(seed)
    symbols = get_gene_symbols(n_genes)
    gene_ids, log_mu_g, theta_g, context_shift_cg, batch_shift_bg = _draw_genes(rng, n_genes, n_contexts, n_batches, umis_per_cell)

    target_p, lfc_pg, effect_rows, pert_labels = _draw_effects(rng, log_mu_g, n_perts, genes_per_effect, symbols, gene_ids)

    # Cells are drawn i.i.d., so the file is shuffled (not grouped); Dirichlet weights give uneven group sizes, including some smaller than a set.
    context_n = rng.integers(0, n_contexts, n_cells)
    pert_weights_p = rng.dirichlet(np.full(n_perts, 2.0))
    pert_n = np.where(rng.random(n_cells) < control_frac, 0, 1 + rng.choice(n_perts, n_cells, p=pert_weights_p))
    batch_n = rng.integers(0, n_batches, n_cells)
    sim = dict(seed=seed, n_cells=n_cells, n_genes=n_genes, n_contexts=n_contexts, n_perts=n_perts, control_frac=control_frac, log1p=log1p, sparse=sparse)
    sim.update(genes_per_effect=genes_per_effect, context_effect_sd=context_effect_sd)
    if umis_per_cell is not None:  # anndata cannot store None
        sim["umis_per_cell"] = umis_per_cell
    _write_obs_var(path, pert_labels, context_col, context_n, pert_n, batch_n, n_contexts, n_batches, symbols, gene_ids, effect_rows, sim)

    # Drawn only when asked for, so files simulated without it stay byte for byte the same. Context c sees lfc_pg * scale_cpg[c] (signs kept); true_effects
    # holds the shared lfc_pg.
    scale_cpg = np.exp(rng.normal(0.0, context_effect_sd, (n_contexts, *lfc_pg.shape))) if context_effect_sd > 0 else np.ones((n_contexts, 1, 1))
    lfc_cpg = lfc_pg[None] * scale_cpg
    means = (log_mu_g, context_shift_cg, batch_shift_bg, lfc_cpg, theta_g)
    _write_counts(path, rng, means, context_n, pert_n, batch_n, sparse=sparse, log1p=log1p, chunk_cells=chunk_cells)
    log.info(
        "wrote %s: %d cells x %d genes, %d perturbations, %d contexts (%s, %s)",
        path,
        n_cells,
        n_genes,
        n_perts,
        n_contexts,
        "CSR" if sparse else "dense",
        "log1p" if log1p else "counts",
    )
    return path


def _draw_genes(rng: np.random.Generator, n_genes: int, n_contexts: int, n_batches: int, umis_per_cell: float | None):
    """Gene ids (with versions), log-normal gene means, NB dispersions, and per-context and per-batch shifts of the means."""
    versions_g = rng.integers(1, 10, n_genes)
    gene_ids = [f"ENSG{i + 1:011d}.{v}" for i, v in enumerate(versions_g)]
    # Gene means: log-normal, tuned so about 87% of counts are zero with ~600 UMIs per cell (a 2k-gene HVG panel).
    log_mu_g = rng.normal(-2.8, 1.8, n_genes)
    if umis_per_cell is not None:
        # Sequencing depth: rescale the gene means so a typical cell has about this many UMIs (a panel of fewer genes keeps realistic counts).
        log_mu_g = log_mu_g + np.log(umis_per_cell / np.exp(log_mu_g).sum())
    theta_g = np.exp(rng.normal(np.log(1.5), 0.5, n_genes))
    context_shift_cg = rng.normal(0.0, 0.25, (n_contexts, n_genes))
    batch_shift_bg = rng.normal(0.0, 0.1, (n_batches, n_genes))
    return gene_ids, log_mu_g, theta_g, context_shift_cg, batch_shift_bg


def _draw_effects(rng: np.random.Generator, log_mu_g: np.ndarray, n_perts: int, genes_per_effect: int, symbols: list[str], gene_ids: list[str]):
    """Each perturbation's log2 fold changes [p + 1, g] (row 0: control), the rows of `uns/true_effects`, and the perturbation labels."""
    n_genes = len(log_mu_g)
    # Targets drawn from the better-expressed half so a knock-down is visible in the counts.
    expressed_g = np.argsort(log_mu_g)[n_genes // 2 :]
    target_p = rng.choice(expressed_g, n_perts, replace=False)
    lfc_pg = np.zeros((n_perts + 1, n_genes), np.float64)  # row 0 = control, no effect
    effect_rows: list[tuple[str, str, str, float]] = []
    for p, target in enumerate(target_p):
        lfc_pg[p + 1, target] = -rng.uniform(1.5, 3.0)
        others = rng.choice(np.setdiff1d(np.arange(n_genes), [target]), genes_per_effect, replace=False)
        lfc_pg[p + 1, others] = rng.choice([-1.0, 1.0], genes_per_effect) * rng.uniform(0.8, 2.0, genes_per_effect)
        for gene in [target, *others]:
            effect_rows.append((symbols[target], symbols[gene], gene_ids[gene].split(".")[0], float(lfc_pg[p + 1, gene])))
    pert_labels = [CONTROL_LABEL] + [symbols[t] for t in target_p]
    return target_p, lfc_pg, effect_rows, pert_labels


def _write_obs_var(path: str, pert_labels, context_col, context_n, pert_n, batch_n, n_contexts, n_batches, symbols, gene_ids, effect_rows, sim: dict) -> None:
    """`obs`, `var` and `uns` through anndata (X is appended after)."""
    context_names = [f"line{c}" for c in range(n_contexts)]
    obs = pd.DataFrame(
        {
            "target_gene": pd.Categorical.from_codes(pert_n, categories=pert_labels),
            context_col: pd.Categorical.from_codes(context_n, categories=context_names),
            "batch": pd.Categorical.from_codes(batch_n, categories=[f"batch{b}" for b in range(n_batches)]),
        },
        index=[f"cell{i}" for i in range(len(pert_n))],
    )
    var = pd.DataFrame({"gene_id": gene_ids}, index=symbols)
    effects = pd.DataFrame(effect_rows, columns=["target_gene", "gene", "gene_id", "log2fc"])
    uns = {"true_effects": effects, "simulation": sim}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    anndata.AnnData(obs=obs, var=var, uns=uns).write_h5ad(path)


def _write_counts(path: str, rng: np.random.Generator, means: tuple, context_n, pert_n, batch_n, *, sparse: bool, log1p: bool, chunk_cells: int) -> None:
    """X, chunk by chunk: negative binomial counts around the per-cell means (optionally normalised + log1p)."""
    log_mu_g, context_shift_cg, batch_shift_bg, lfc_cpg, theta_g = means
    n_cells, n_genes = len(context_n), len(log_mu_g)
    with h5py.File(path, "a") as fd:
        write = _make_csr_writer(fd, n_cells, n_genes) if sparse else _make_dense_writer(fd, n_cells, n_genes)
        for start in range(0, n_cells, chunk_cells):
            stop = min(start + chunk_cells, n_cells)
            log_mean_ng = (
                log_mu_g[None, :]
                + context_shift_cg[context_n[start:stop]]
                + batch_shift_bg[batch_n[start:stop]]
                + np.log(2.0) * lfc_cpg[context_n[start:stop], pert_n[start:stop]]
                + rng.normal(0.0, 0.3, (stop - start, 1))
            )
            mean_ng = np.exp(log_mean_ng)
            counts_ng = rng.poisson(rng.gamma(theta_g, mean_ng / theta_g)).astype(np.float32)
            if log1p:
                sums_n = np.maximum(counts_ng.sum(axis=1, keepdims=True), 1.0)
                counts_ng = np.log1p(counts_ng * (TARGET_SUM / sums_n)).astype(np.float32)
            write(start, counts_ng)
        write(n_cells, None)


def _make_csr_writer(fd: h5py.File, n_cells: int, n_genes: int):
    """Append CSR rows chunk by chunk into resizable datasets; call with x=None to write indptr."""
    group = fd.create_group("X")
    group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n_cells, n_genes])})
    data = group.create_dataset("data", shape=(0,), maxshape=(None,), chunks=(CSR_CHUNK_ELEMS,), dtype=np.float32)
    indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), chunks=(CSR_CHUNK_ELEMS,), dtype=np.int32)
    indptr_parts: list[np.ndarray] = [np.zeros(1, np.int64)]

    def write(start: int, x_ng: np.ndarray | None) -> None:
        if x_ng is None:
            indptr = np.concatenate(indptr_parts)
            assert len(indptr) == n_cells + 1, f"wrote {len(indptr) - 1} rows, expected {n_cells}"
            group.create_dataset("indptr", data=indptr)
            return
        csr = scipy.sparse.csr_matrix(x_ng)
        nnz_before = data.shape[0]
        data.resize((nnz_before + csr.nnz,))
        indices.resize((nnz_before + csr.nnz,))
        data[nnz_before:] = csr.data
        indices[nnz_before:] = csr.indices
        indptr_parts.append(nnz_before + csr.indptr[1:].astype(np.int64))

    return write


def _make_dense_writer(fd: h5py.File, n_cells: int, n_genes: int):
    """Write dense rows into a contiguous dataset (anndata's layout for dense X)."""
    ds = fd.create_dataset("X", shape=(n_cells, n_genes), dtype=np.float32)
    ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

    def write(start: int, x_ng: np.ndarray | None) -> None:
        if x_ng is None:
            return
        ds[start : start + len(x_ng)] = x_ng

    return write


# The embedded cell-set dataset: a seeded simulated screen, written on first use when `--h5ad_path` names this path (relative to the working directory, like
# `--output_dir`).
EMBEDDED_FPATH = os.path.join("data", "sim_vcc.h5ad")
# 3 cell lines, 48 knock-downs that each move their target and 24 other genes of a 256-gene panel at ~2000 UMIs per cell; effects are shared by the cell lines
# up to a per-line scale (log-normal, sd 0.3).
EMBEDDED_KWARGS = {
    "n_cells": 60_000,
    "n_genes": 256,
    "n_contexts": 3,
    "n_perts": 48,
    "genes_per_effect": 24,
    "context_effect_sd": 0.3,
    "umis_per_cell": 2000,
    "seed": 0,
}


def get_sim_params(fpath: str) -> dict:
    """The simulation parameters a simulated file records in `uns/simulation` (empty if none)."""
    import h5py

    with h5py.File(fpath, "r") as fd:
        group = fd.get("uns/simulation")
        return {} if group is None else {k: group[k][()].item() for k in group}


def prepare_embedded(fpath: str) -> None:
    """Write the embedded simulated screen to `fpath` unless it is there with the current parameters (a few seconds); atomic, so concurrent processes agree."""
    if os.path.isfile(fpath):
        recorded = get_sim_params(fpath)
        if not recorded:
            raise ValueError(
                f"{fpath} is the path of the embedded simulated screen but holds another file (no uns/simulation); "
                "move that file and pass its own path to --h5ad_path"
            )
        stale = {k: recorded.get(k) for k, v in EMBEDDED_KWARGS.items() if recorded.get(k) != v}
        if not stale:
            return
        log.info("%s was simulated with other parameters (%s); simulating it again", fpath, stale)
    log.info("generating the embedded simulated screen %s with cells.simulate %s", fpath, EMBEDDED_KWARGS)
    tmp_fpath = f"{fpath}.tmp{os.getpid()}"
    simulate_h5ad(tmp_fpath, **EMBEDDED_KWARGS)
    os.replace(tmp_fpath, fpath)
