"""Write a seeded, VCC-style perturbation `.h5ad` with known effects, streamed in chunks of cells.

Counts are negative binomial (gamma-Poisson) around per-gene log-normal means, shifted per context and per batch, scaled by a per-cell size factor, and moved by each perturbation's sparse log2 fold changes (the target gene knocked down plus a few genes up or down). A perturbation's fold changes are shared by all contexts; with `context_effect_sd` > 0 each context scales each of them by its own log-normal factor, so a perturbation seen in one context predicts, but does not equal, its effect in another. Controls are labelled `non-targeting`. The true effects are stored in `uns['true_effects']` so tests and docs can check that they are recovered.

`obs`, `var` and `uns` are written by anndata; `X` is appended with h5py chunk by chunk (CSR arrays grow as resizable datasets, dense X is a preallocated contiguous dataset), so a 200k x 2k file needs only one chunk of cells in RAM. `anndata.read_h5ad` reads the result like any other file.

Usage: python -m tools.simulate_h5ad OUT.h5ad --n_cells 200000 --n_genes 2000 --seed 0
"""

import argparse
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

    # Cells are drawn i.i.d., so the file is shuffled (not grouped); Dirichlet weights give uneven group sizes, including some smaller than a set.
    context_n = rng.integers(0, n_contexts, n_cells)
    pert_weights_p = rng.dirichlet(np.full(n_perts, 2.0))
    pert_n = np.where(rng.random(n_cells) < control_frac, 0, 1 + rng.choice(n_perts, n_cells, p=pert_weights_p))
    batch_n = rng.integers(0, n_batches, n_cells)
    context_names = [f"line{c}" for c in range(n_contexts)]
    obs = pd.DataFrame(
        {
            "target_gene": pd.Categorical.from_codes(pert_n, categories=pert_labels),
            context_col: pd.Categorical.from_codes(context_n, categories=context_names),
            "batch": pd.Categorical.from_codes(batch_n, categories=[f"batch{b}" for b in range(n_batches)]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"gene_id": gene_ids}, index=symbols)
    effects = pd.DataFrame(effect_rows, columns=["target_gene", "gene", "gene_id", "log2fc"])
    uns = {
        "true_effects": effects,
        "simulation": {
            "seed": seed,
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_contexts": n_contexts,
            "n_perts": n_perts,
            "control_frac": control_frac,
            "log1p": log1p,
            "sparse": sparse,
            "genes_per_effect": genes_per_effect,
            "context_effect_sd": context_effect_sd,
            **({} if umis_per_cell is None else {"umis_per_cell": umis_per_cell}),  # anndata cannot store None
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    anndata.AnnData(obs=obs, var=var, uns=uns).write_h5ad(path)

    # Drawn only when asked for, so files simulated without it stay byte for byte the same. Context c sees lfc_pg * scale_cpg[c] (signs kept); true_effects holds the shared lfc_pg.
    scale_cpg = np.exp(rng.normal(0.0, context_effect_sd, (n_contexts, *lfc_pg.shape))) if context_effect_sd > 0 else np.ones((n_contexts, 1, 1))
    lfc_cpg = lfc_pg[None] * scale_cpg
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
    log.info("wrote %s: %d cells x %d genes, %d perturbations, %d contexts (%s, %s)", path, n_cells, n_genes, n_perts, n_contexts, "CSR" if sparse else "dense", "log1p" if log1p else "counts")
    return path


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .h5ad path")
    parser.add_argument("--n_cells", type=int, default=20_000)
    parser.add_argument("--n_genes", type=int, default=2_000)
    parser.add_argument("--n_contexts", type=int, default=2)
    parser.add_argument("--n_perts", type=int, default=48)
    parser.add_argument("--control_frac", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true", help="dense X instead of CSR")
    parser.add_argument("--log1p", action="store_true", help="store log1p(normalize_total 1e4) instead of raw counts")
    parser.add_argument("--chunk_cells", type=int, default=8_192)
    parser.add_argument("--context_col", default="cell_line")
    parser.add_argument("--genes_per_effect", type=int, default=8, help="genes moved by each perturbation besides its target")
    parser.add_argument("--context_effect_sd", type=float, default=0.0, help="per-context log-normal scale of each fold change (0: effects shared exactly by all contexts)")
    parser.add_argument("--umis_per_cell", type=float, default=None, help="rescale gene means to about this many UMIs per cell (default: ~600 at 2000 genes, fewer with fewer genes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    simulate_h5ad(
        args.out,
        n_cells=args.n_cells,
        n_genes=args.n_genes,
        n_contexts=args.n_contexts,
        n_perts=args.n_perts,
        control_frac=args.control_frac,
        seed=args.seed,
        sparse=not args.dense,
        log1p=args.log1p,
        chunk_cells=args.chunk_cells,
        context_col=args.context_col,
        genes_per_effect=args.genes_per_effect,
        context_effect_sd=args.context_effect_sd,
        umis_per_cell=args.umis_per_cell,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
