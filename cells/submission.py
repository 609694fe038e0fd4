"""Virtual Cell Challenge submissions: the perturbation list (`pert_counts.csv`), the gene list, the predicted `.h5ad`, and its checks.

A submission is an `.h5ad` whose `obs["target_gene"]` names each cell's perturbation, whose `var` is the challenge's gene list in
its order, with exactly `n_cells` cells for every row of `pert_counts.csv`, control cells (`non-targeting`) included, non-negative
log1p values (max below 15, not all integers: integers read as counts), at most 200,000 cells. `validate` checks all of it the way
`cell-eval prep` does and names the first problem; `prep` runs cell-eval's own packer when `zstd` and `tar` are on the PATH.
"""

import csv
import os
import shutil

import numpy as np

MAX_CELLS = 200_000
MAX_VALUE = 15.0  # log1p values; anything above is counts, not log1p


def read_pert_counts(fpath: str) -> dict[str, int]:
    """`target_gene,n_cells` rows (a header row, as the challenge ships it) -> {perturbation: cells to predict}, in file order."""
    if not os.path.isfile(fpath):
        raise FileNotFoundError(f"--pert_counts {fpath!r} does not exist; pass the challenge's pert_counts.csv (columns target_gene,n_cells)")
    with open(fpath, newline="") as fd:
        rows = list(csv.DictReader(fd))
    if not rows or not {"target_gene", "n_cells"} <= set(rows[0]):
        raise ValueError(f"--pert_counts {fpath}: needs a header with target_gene and n_cells, got {list(rows[0]) if rows else 'no rows'}")
    out: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        pert, n = row["target_gene"].strip(), row["n_cells"].strip()
        if not pert or not n.isdigit() or int(n) < 1:
            raise ValueError(f"--pert_counts {fpath} line {i}: {row}; every row needs a perturbation and a positive integer n_cells")
        if pert in out:
            raise ValueError(f"--pert_counts {fpath} line {i}: perturbation {pert!r} listed twice")
        out[pert] = int(n)
    return out


def read_gene_list(fpath: str) -> list[str]:
    """The challenge's `gene_names.csv` (one gene per line, no header) or any one-gene-per-line file."""
    if not os.path.isfile(fpath):
        raise FileNotFoundError(f"--genes {fpath!r} does not exist; pass the challenge's gene_names.csv (one gene per line)")
    with open(fpath) as fd:
        genes = [line.strip().split(",")[0] for line in fd if line.strip()]
    if not genes:
        raise ValueError(f"--genes {fpath} lists no gene")
    if len(set(genes)) != len(genes):
        raise ValueError(f"--genes {fpath} lists some genes more than once")
    return genes


def build(cells_by_pert: dict[str, np.ndarray], gene_names: list[str], pert_col: str = "target_gene"):
    """The submission AnnData: the cells of every perturbation (controls among them) in the order given, X float32 [cells, genes]."""
    import anndata
    import pandas as pd

    labels = [p for p, x in cells_by_pert.items() for _ in range(len(x))]
    obs = pd.DataFrame({pert_col: pd.Categorical(labels, categories=list(cells_by_pert))}, index=[f"cell{i}" for i in range(len(labels))])
    x = np.concatenate(list(cells_by_pert.values())).astype(np.float32)
    return anndata.AnnData(X=x, obs=obs, var=pd.DataFrame(index=list(gene_names)))


def validate(adata, pert_counts: dict[str, int], gene_names: list[str], control_label: str = "non-targeting", pert_col: str = "target_gene") -> None:
    """Raise a ValueError naming the first way `adata` is not a valid submission for this perturbation list and gene list."""
    if pert_col not in adata.obs:
        raise ValueError(f"submission has no obs column {pert_col!r}; columns: {list(adata.obs.columns)}")
    if list(map(str, adata.var_names)) != list(gene_names):
        missing = sorted(set(gene_names) - set(map(str, adata.var_names)))
        raise ValueError(f"submission genes are not the gene list in its order ({len(adata.var_names)} vs {len(gene_names)} genes; missing e.g. {missing[:5]})")
    counts = adata.obs[pert_col].astype(str).value_counts().to_dict()
    if control_label not in counts:
        raise ValueError(f"submission has no {control_label!r} control cells; cell-eval prep needs them")
    for pert, n in pert_counts.items():
        if counts.get(pert, 0) != n:
            raise ValueError(f"submission has {counts.get(pert, 0)} cells of {pert!r}, pert_counts asks for exactly {n}")
    extra = sorted(set(counts) - set(pert_counts) - {control_label})
    if extra:
        raise ValueError(f"submission has perturbations that pert_counts does not list: {extra[:5]}")
    if adata.n_obs > MAX_CELLS:
        raise ValueError(f"submission has {adata.n_obs} cells; the challenge takes at most {MAX_CELLS}")
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    if not np.isfinite(x).all():
        raise ValueError("submission X holds nan or inf values")
    if x.min() < 0:
        raise ValueError(f"submission X has negative values (min {x.min():g}); log1p expression is >= 0")
    if x.max() >= MAX_VALUE:
        raise ValueError(f"submission X has values up to {x.max():g}: log1p data stays below {MAX_VALUE:g} (are these counts?)")
    if np.all(x == np.round(x)):
        raise ValueError("submission X is all integers: cell-eval would read it as counts and normalize it again")


def prep(h5ad_fpath: str, genes_fpath: str, out_fpath: str | None = None) -> str | None:
    """Pack with cell-eval's own `prep` (zstd + tar + watermark) into `<input>.prep.vcc`; None when zstd or tar is missing."""
    if shutil.which("zstd") is None or shutil.which("tar") is None:
        return None
    import anndata
    from cell_eval._cli._prep import strip_anndata

    out_fpath = out_fpath or f"{h5ad_fpath.removesuffix('.h5ad')}.prep.vcc"
    strip_anndata(anndata.read_h5ad(h5ad_fpath), out_fpath, read_gene_list(genes_fpath), encoding=32)
    return out_fpath
