"""Submission export from a trained set model: exactly n_cells per perturbation, the gene list's order, non-negative log1p values,
control cells present, the checkpoint's vocabulary, and unseen perturbations refused unless asked for."""

import os
import sys

import numpy as np
import pytest
import torch

import main
from cells import simulate as simulate_h5ad
from cells import submission
from tasks.cellset_export import ExportRequest, export
from tests import proc
from utils import checkpoint as ckpt

anndata = pytest.importorskip("anndata")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    dpath = tmp_path_factory.mktemp("vcc")
    fpath = simulate_h5ad.simulate_h5ad(str(dpath / "s.h5ad"), n_cells=1500, n_genes=40, n_perts=8, n_contexts=2, seed=5, umis_per_cell=1000)
    argv = ["--data_set", "h5ad", "--h5ad_path", fpath, "--model", "set_transformer_tiny", "--cells_per_set", "8", "--batch_size", "4"]
    argv += ["--output_dir", str(dpath / "run"), "--epochs", "1", "--no-tensorboard", "--cell_eval", "off", "--device", "cpu"]
    main.main(argv)
    return dpath, ckpt.list_checkpoints(str(dpath / "run"))[0][1]


def _write(fpath, text: str) -> str:
    fpath.write_text(text)
    return str(fpath)


def test_checkpoint_records_the_vocabulary(trained):
    _, fpath = trained
    meta = ckpt.load_file(fpath)["data"]
    assert meta["pert_names"][0] == meta["control_label"] == "non-targeting" and len(meta["pert_names"]) == 9
    assert meta["gene_names"][:2] == ["GENE1", "GENE2"] and len(meta["gene_names"]) == 40
    assert meta["context_names"] == ["line0", "line1"] and meta["cells_per_set"] == 8


def test_export_has_exactly_the_asked_cells_in_the_gene_list_order(trained, tmp_path):
    dpath, fpath = trained
    meta = ckpt.load_file(fpath)["data"]
    perts = meta["pert_names"][1:4]
    counts = _write(tmp_path / "pert_counts.csv", "target_gene,n_cells\n" + "".join(f"{p},{n}\n" for p, n in zip(perts, (5, 17, 8), strict=True)))
    genes = list(reversed(meta["gene_names"]))  # another order than the model's
    genes_fpath = _write(tmp_path / "gene_names.csv", "\n".join(genes) + "\n")
    out = tmp_path / "pred.h5ad"
    request = ExportRequest(checkpoint=fpath, pert_counts=counts, context="line1", out=str(out), genes=genes_fpath, n_controls=30)
    export(request)
    adata = anndata.read_h5ad(out)
    assert list(adata.var_names) == genes
    assert adata.obs["target_gene"].value_counts().to_dict() == {perts[0]: 5, perts[1]: 17, perts[2]: 8, "non-targeting": 30}
    x = np.asarray(adata.X)
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() < submission.MAX_VALUE
    submission.validate(adata, submission.read_pert_counts(counts), genes)
    # The same cells as the model's own columns, reordered: gene g of the file is the model's gene g.
    again = tmp_path / "again.h5ad"
    export(ExportRequest(checkpoint=fpath, pert_counts=counts, context="line1", out=str(again), n_controls=30))
    ref = anndata.read_h5ad(again)
    torch.testing.assert_close(np.asarray(adata.X)[:, ::-1].copy(), np.asarray(ref.X), rtol=0, atol=0)


def test_unseen_perturbations_stop_unless_asked_for(trained, tmp_path):
    """Through the command line: one `error:` line and exit 2 by default; `--unseen controls` exports, as asked."""
    _, fpath = trained
    pert = ckpt.load_file(fpath)["data"]["pert_names"][1]
    counts = _write(tmp_path / "pc.csv", f"target_gene,n_cells\n{pert},4\nNOT_A_GENE,6\nnon-targeting,10\n")
    out = tmp_path / "p.h5ad"
    cmd = [sys.executable, "-m", "tools.vcc_export", "--checkpoint", fpath, "--pert_counts", counts, "--context", "line0", "--out", str(out)]
    r = proc.run(cmd, cwd=REPO, timeout=180)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 perturbations of --pert_counts have no embedding in the model (e.g. ['NOT_A_GENE']")
    assert not out.exists()
    export(ExportRequest(checkpoint=fpath, pert_counts=counts, context="line0", out=str(out), unseen="controls"))
    assert anndata.read_h5ad(out).obs["target_gene"].value_counts().to_dict() == {pert: 4, "NOT_A_GENE": 6, "non-targeting": 10}


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda a: a[a.obs["target_gene"] != "GENE1"].copy(), "0 cells of 'GENE1', pert_counts asks for exactly 4"),
        (lambda a: a[a.obs["target_gene"] != "non-targeting"].copy(), "no 'non-targeting' control cells"),
        (lambda a: a[:, ::-1].copy(), "genes are not the gene list in its order"),
        (lambda a: anndata.AnnData(X=np.round(np.asarray(a.X) * 3), obs=a.obs, var=a.var), "all integers"),
        (lambda a: anndata.AnnData(X=np.asarray(a.X) - 1, obs=a.obs, var=a.var), "negative values"),
    ],
)
def test_validator_names_what_is_wrong(bad, message):
    genes = [f"G{i}" for i in range(6)]
    good = submission.build({"GENE1": np.full((4, 6), 0.5, np.float32), "non-targeting": np.full((3, 6), 0.25, np.float32)}, genes)
    submission.validate(good, {"GENE1": 4}, genes)
    with pytest.raises(ValueError, match=message):
        submission.validate(bad(good), {"GENE1": 4}, genes)
