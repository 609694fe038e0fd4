"""The h5ad cell-set pipeline on real `.h5ad` files written in a temp dir: exact reads, transforms, validation messages, gene vocab maps,
set sampling and per-process splits."""

import collections

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch

from cells import genes, h5ad
from cells import sets as cell_sets
from cells import simulate as simulate_h5ad


def write_h5ad(
    fpath: str,
    x_ng: np.ndarray,
    obs: dict[str, list[str]],
    *,
    symbols: list[str] | None = None,
    gene_ids: list[str] | None = None,
    sparse: bool = True,
    compression: str | None = None,
) -> str:
    """A small file written by anndata itself, so the reader is checked against anndata's own encoding."""
    n_genes = x_ng.shape[1]
    var = pd.DataFrame(index=symbols or [f"G{i}" for i in range(n_genes)])
    if gene_ids is not None:
        var["gene_id"] = gene_ids
        var["highly_variable"] = pd.array(
            [True, None] * (n_genes // 2) + [False] * (n_genes % 2), dtype="boolean"
        )  # a nullable column the gene reader must skip
    obs_df = pd.DataFrame({k: pd.Categorical(v) for k, v in obs.items()}, index=[f"c{i}" for i in range(len(x_ng))])
    x = scipy.sparse.csr_matrix(x_ng.astype(np.float32)) if sparse else x_ng.astype(np.float32)
    anndata.AnnData(X=x, obs=obs_df, var=var).write_h5ad(fpath, compression=compression)
    return fpath


def make_counts(n_cells: int, n_genes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(0.5, 4.0, (n_cells, n_genes))).astype(np.float32) * (rng.random((n_cells, n_genes)) < 0.3)


def make_obs(n_cells: int, seed: int = 0, n_perts: int = 4, contexts: tuple[str, ...] = ("A", "B")) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    perts = [f"P{i}" for i in range(n_perts)] + ["non-targeting"] * 2
    return {"target_gene": list(rng.choice(perts, n_cells)), "cell_line": list(rng.choice(list(contexts), n_cells))}


def log1p_normalize(x_ng: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    sums_n = x_ng.sum(axis=1, keepdims=True, dtype=np.float64)
    return np.log1p(x_ng * np.where(sums_n > 0, target_sum / np.maximum(sums_n, 1e-12), 0.0)).astype(np.float32)


@pytest.fixture(scope="module")
def sim_fpath(tmp_path_factory) -> str:
    return simulate_h5ad.simulate_h5ad(str(tmp_path_factory.mktemp("sim") / "sim.h5ad"), n_cells=3000, n_genes=120, n_perts=12, seed=1, chunk_cells=700)


# ---------------------------------------------------------------- reads


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("log1p", [False, True])
@pytest.mark.parametrize("in_memory", [False, True])
def test_simulated_reads_equal_anndata(tmp_path, sparse: bool, log1p: bool, in_memory: bool) -> None:
    fpath = simulate_h5ad.simulate_h5ad(str(tmp_path / "s.h5ad"), n_cells=900, n_genes=60, n_perts=6, seed=3, sparse=sparse, log1p=log1p, chunk_cells=256)
    expected_ng = anndata.read_h5ad(fpath).X
    expected_ng = expected_ng.toarray() if sparse else np.asarray(expected_ng)
    reader = h5ad.H5adFile(fpath, transform="none", in_memory=in_memory)
    assert reader.backend == ("memory" if in_memory else "memmap")
    rows_n = np.random.default_rng(0).integers(0, 900, 300)  # unsorted, with duplicates
    np.testing.assert_array_equal(reader.read_rows(rows_n), expected_ng[rows_n])


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_anndata_written_reads_equal_anndata(tmp_path, compression: str | None) -> None:
    """anndata's own chunk layout (B-tree nodes between chunks, rows across chunk boundaries) and the h5py path for compressed files, with its row cache."""
    x_ng = make_counts(1500, 300)
    fpath = write_h5ad(str(tmp_path / "a.h5ad"), x_ng, make_obs(1500), compression=compression)
    rows_n = np.random.default_rng(1).integers(0, 1500, 400)
    with h5py.File(fpath) as fd:
        chunk_len, indptr = fd["X/data"].chunks[0], fd["X/indptr"][:]
        # For the test to mean something: several chunks, and requested rows that straddle a chunk boundary.
        assert fd["X/data"].id.get_num_chunks() > 3
        assert np.any(indptr[rows_n] // chunk_len != (indptr[rows_n + 1] - 1) // chunk_len)
    reader = h5ad.H5adFile(fpath, transform="none")
    assert reader.backend == ("memmap" if compression is None else "h5py")
    np.testing.assert_array_equal(reader.read_rows(rows_n), x_ng[rows_n])
    np.testing.assert_array_equal(reader.read_rows(rows_n[::-1]), x_ng[rows_n[::-1]])  # second read partly from the LRU cache on the h5py path
    np.testing.assert_array_equal(reader.read_rows(np.arange(1400, 1500)), x_ng[1400:1500])  # adjacent rows merged into one run


def test_chunked_memmap_reads_chunks_at_any_byte_offset(tmp_path) -> None:
    """Chunks interleaved with other allocations, at byte offsets that are not multiples of the item size."""
    values_m = np.random.default_rng(0).random(500).astype(np.float32)
    fpath = str(tmp_path / "odd.h5")
    with h5py.File(fpath, "w") as fd:
        ds = fd.create_dataset("x", shape=(0,), maxshape=(None,), chunks=(7,), dtype=np.float32)
        for i in range(0, 500, 7):
            ds.resize((min(i + 7, 500),))
            ds[i : i + 7] = values_m[i : i + 7]
            fd.create_dataset(f"pad{i}", data=np.ones(1001 + i % 3, np.uint8))  # odd-sized allocations shift the next chunk
    with h5py.File(fpath) as fd:
        source = h5ad.ChunkedMemmap(fpath, fd["x"])
    assert len(source._residues) > 1
    rng = np.random.default_rng(1)
    starts_n, lens_n = rng.integers(0, 480, 60), rng.integers(0, 20, 60)
    expected = np.concatenate([values_m[a : a + n] for a, n in zip(starts_n, lens_n, strict=True)])
    np.testing.assert_array_equal(source.take_ranges(starts_n, lens_n), expected)


@pytest.mark.parametrize("sparse", [True, False])
def test_log1p_transform_matches_normalize_total_log1p(tmp_path, sparse: bool) -> None:
    x_ng = make_counts(200, 40)
    x_ng[5] = 0  # an empty cell stays zeros
    fpath = write_h5ad(str(tmp_path / "c.h5ad"), x_ng, make_obs(200), sparse=sparse)
    reader = h5ad.H5adFile(fpath, transform="log1p", target_sum=1e4)
    rows_n = np.arange(200)
    np.testing.assert_allclose(reader.read_rows(rows_n), log1p_normalize(x_ng), rtol=1e-5, atol=1e-6)
    # The default: the file's median total count, as scanpy's normalize_total(target_sum=None) + log1p (scanpy itself).
    import anndata
    import scanpy as sc

    adata = anndata.AnnData(X=x_ng.copy())
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    median = h5ad.H5adFile(fpath, transform="log1p")
    assert median.target_sum == float(np.median(x_ng.sum(axis=1)[x_ng.sum(axis=1) > 0]))
    np.testing.assert_allclose(median.read_rows(rows_n), np.asarray(adata.X), rtol=1e-5, atol=1e-6)


def test_auto_transform_detects_counts_and_log1p(sim_fpath, tmp_path) -> None:
    assert h5ad.H5adFile(sim_fpath).transform == "log1p"  # raw counts -> normalize + log1p
    log_fpath = simulate_h5ad.simulate_h5ad(str(tmp_path / "log.h5ad"), n_cells=500, n_genes=60, n_perts=5, log1p=True)
    assert h5ad.H5adFile(log_fpath).transform == "none"


@pytest.mark.parametrize("values", ["binary", "scaled"])
def test_auto_transform_ambiguous_is_an_error(tmp_path, values: str) -> None:
    x_ng = (make_counts(100, 30) > 0).astype(np.float32)  # integers with max 1: counts or a binary matrix?
    if values == "scaled":
        x_ng = x_ng * 123.4  # non-integer and large: normalized without log?
    fpath = write_h5ad(str(tmp_path / "amb.h5ad"), x_ng, make_obs(100))
    with pytest.raises(ValueError, match="cannot tell raw counts from log1p.*--h5ad_transform"):
        h5ad.H5adFile(fpath)
    assert h5ad.H5adFile(fpath, transform="none").transform == "none"


# ---------------------------------------------------------------- validation


def test_missing_file_names_the_path(tmp_path) -> None:
    fpath = str(tmp_path / "nope.h5ad")
    with pytest.raises(FileNotFoundError, match="nope.h5ad"):
        h5ad.H5adFile(fpath)


def test_missing_column_lists_close_matches(tmp_path) -> None:
    obs = make_obs(50)
    obs["cell_type"] = obs.pop("cell_line")
    fpath = write_h5ad(str(tmp_path / "ct.h5ad"), make_counts(50, 10), obs)
    with pytest.raises(ValueError, match=r"no column 'cell_line' \(--context_col\).*close matches: \['cell_type'\]"):
        h5ad.H5adFile(fpath, transform="none")
    assert h5ad.H5adFile(fpath, context_col="cell_type", transform="none").context_categories == ["A", "B"]


def test_absent_control_label_lists_frequent_labels_and_close_matches(tmp_path) -> None:
    obs = make_obs(60)
    obs["target_gene"] = ["non_targeting" if p == "non-targeting" else p for p in obs["target_gene"]]
    fpath = write_h5ad(str(tmp_path / "ctl.h5ad"), make_counts(60, 10), obs)
    with pytest.raises(
        ValueError, match=r"control label 'non-targeting'.*most frequent labels: \['non_targeting \(\d+ cells\)'.*close matches: \['non_targeting'\]"
    ):
        h5ad.H5adFile(fpath, transform="none")


def test_unknown_eval_pert_is_an_error_with_close_match(sim_fpath, tmp_path) -> None:
    labels = h5ad.H5adFile(sim_fpath).pert_categories
    eval_fpath = tmp_path / "eval.txt"
    eval_fpath.write_text(f"{labels[1]}\n{labels[2]}x\n")
    with pytest.raises(ValueError, match=rf"perturbation '{labels[2]}x' has no cells.*close matches: \['{labels[2]}'"):
        cell_sets.make_cellset_data([sim_fpath], batch_size=2, cells_per_set=8, eval_perts=str(eval_fpath))


# ---------------------------------------------------------------- gene vocab


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_gene_vocab_matches_ids_then_unique_symbols(tmp_path) -> None:
    x_ng = make_counts(80, 5) + 1.0  # no zero column, so a mapped column is visibly not the zero fill
    symbols = ["A", "B", "DUP", "DUP", "C"]
    gene_ids = ["ENSG00000000001.5", "ENSG00000000002.1", "ENSG00000000003.2", "ENSG00000000004.9", "ENSG00000000005.3"]
    fpath = write_h5ad(str(tmp_path / "v.h5ad"), x_ng, make_obs(80), symbols=symbols, gene_ids=gene_ids)
    reader = h5ad.H5adFile(fpath, transform="none")
    assert reader.gene_ids == [g.split(".")[0] for g in gene_ids]  # versions stripped
    vocab_fpath = tmp_path / "vocab.txt"
    # Ensembl id (with a different version) -> gene 4; unique symbol -> gene 1; ambiguous symbol; unknown gene.
    vocab_fpath.write_text("ENSG00000000005.7\nB\nDUP\nNOTAGENE\n")
    vocab = genes.read_gene_vocab(str(vocab_fpath))
    gene_map = genes.make_gene_map(vocab, reader.gene_symbols, reader.gene_ids, vocab_name=str(vocab_fpath), h5ad_fpath=fpath)
    assert (gene_map.n_matched, gene_map.n_ambiguous, gene_map.n_missing) == (2, 1, 1)
    np.testing.assert_array_equal(gene_map.vocab_to_file_g, [4, 1, -1, -1])
    reader.set_gene_map(gene_map)
    out_ng = reader.read_rows(np.arange(80))
    np.testing.assert_array_equal(out_ng, np.stack([x_ng[:, 4], x_ng[:, 1], np.zeros(80), np.zeros(80)], axis=1))


def test_gene_vocab_without_overlap_is_an_error(sim_fpath, tmp_path) -> None:
    vocab_fpath = tmp_path / "other.txt"
    vocab_fpath.write_text("ENSMUSG00000000001\nXist\n")
    with pytest.raises(ValueError, match=r"gene vocab .*other.txt shares no gene with .*sim.h5ad: vocab starts with \['ENSMUSG00000000001', 'Xist'\]"):
        cell_sets.make_cellset_data([sim_fpath], batch_size=2, cells_per_set=8, gene_vocab=str(vocab_fpath))


def test_files_with_different_genes_need_a_vocab(tmp_path) -> None:
    first = write_h5ad(str(tmp_path / "f1.h5ad"), make_counts(60, 6), make_obs(60, seed=1), symbols=list("ABCDEF"))
    x2_ng = make_counts(60, 6, seed=2)
    reordered = write_h5ad(str(tmp_path / "f2.h5ad"), x2_ng, make_obs(60, seed=2), symbols=list("FEDCBA"))
    other = write_h5ad(str(tmp_path / "f3.h5ad"), make_counts(60, 6), make_obs(60), symbols=list("ABCDEZ"))
    data = cell_sets.make_cellset_data([first, reordered], batch_size=1, cells_per_set=4, transform="none")
    assert data.gene_names == list("ABCDEF")
    np.testing.assert_array_equal(data.files[1].read_rows(np.arange(60)), x2_ng[:, ::-1])  # second file mapped by gene name
    with pytest.raises(ValueError, match="different genes.*--gene_vocab"):
        cell_sets.make_cellset_data([first, other], batch_size=1, cells_per_set=4, transform="none")


# ---------------------------------------------------------------- sets


def batches_to_numpy(batches) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy().copy() for k, v in b.items()} for b in batches]


def test_batches_follow_the_contract_and_are_deterministic(sim_fpath) -> None:
    kwargs = dict(batch_size=3, cells_per_set=16, eval_frac=0.25)
    data = cell_sets.make_cellset_data([sim_fpath], seed=5, **kwargs)
    train = batches_to_numpy(data.train_batches(0))
    assert len(train) == data.steps_per_epoch > 0
    for batch in [*train, *batches_to_numpy(data.eval_batches())]:
        assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
            "ctrl": (np.float32, (3, 16, data.n_genes)),
            "target": (np.float32, (3, 16, data.n_genes)),
            "pert": (np.int64, (3,)),
            "cell_line": (np.int64, (3,)),
            "_mask": (np.bool_, (3,)),
        }
    again = batches_to_numpy(cell_sets.make_cellset_data([sim_fpath], seed=5, **kwargs).train_batches(0))
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(train, again, strict=True) for k in a)
    other_seed = batches_to_numpy(cell_sets.make_cellset_data([sim_fpath], seed=6, **kwargs).train_batches(0))
    assert not np.array_equal(train[0]["target"], other_seed[0]["target"])
    other_epoch = batches_to_numpy(data.train_batches(1))
    assert not np.array_equal(train[0]["target"], other_epoch[0]["target"])
    assert isinstance(next(iter(data.train_batches(0)))["ctrl"], torch.Tensor)


def test_sets_hold_one_group_and_controls_of_the_same_context(sim_fpath) -> None:
    data = cell_sets.make_cellset_data([sim_fpath], batch_size=2, cells_per_set=16, eval_frac=0.25)
    reader = data.files[0]
    pert_names = [reader.pert_categories[c] for c in reader.pert_codes_n]
    context_names = [reader.context_categories[c] for c in reader.context_codes_n]
    sets = list(data.iter_train_sets(0)) + data.eval_sets()
    assert sets
    for x in sets:
        assert {pert_names[r] for r in x.rows_s} == {data.pert_names[x.pert]}
        assert {context_names[r] for r in x.rows_s} == {data.context_names[x.context]}
        assert {pert_names[r] for r in x.ctrl_s} == {"non-targeting"}
        assert {context_names[r] for r in x.ctrl_s} == {data.context_names[x.context]}
    assert data.pert_names[data.control_index] == "non-targeting"
    assert not {data.pert_names[x.pert] for x in data.iter_train_sets(0)} & set(data.eval_pert_names)


def test_small_groups_are_sampled_with_replacement_and_counted(tmp_path) -> None:
    obs = {"target_gene": ["P1"] * 40 + ["P2"] * 5 + ["P3"] * 3 + ["non-targeting"] * 20, "cell_line": ["A"] * 68}
    fpath = write_h5ad(str(tmp_path / "small.h5ad"), make_counts(68, 10), obs)
    data = cell_sets.make_cellset_data([fpath], batch_size=1, cells_per_set=16, transform="none")
    assert data.n_small_train_groups == 2
    assert data.n_train_sets == 3 + 1 + 1  # P1: 40 cells -> 3 sets, the last overlapping the second
    by_pert = collections.defaultdict(list)
    for x in data.iter_train_sets(0):
        by_pert[data.pert_names[x.pert]].append(x.rows_s)
    assert len(by_pert["P2"][0]) == 16 and set(by_pert["P2"][0]) <= set(range(40, 45))
    assert all(len(set(rows_s)) == 16 for rows_s in by_pert["P1"])  # a group big enough never repeats a cell within a set
    assert set(np.concatenate(by_pert["P1"])) == set(range(40))  # every cell of the group is used in the epoch


@pytest.mark.parametrize("process_count", [2, 3])
def test_eval_covers_every_held_out_group_once_across_processes(sim_fpath, tmp_path, process_count: int) -> None:
    eval_fpath = tmp_path / "eval_perts.txt"
    labels = sorted(set(h5ad.H5adFile(sim_fpath).pert_categories) - {"non-targeting"})
    eval_fpath.write_text("\n".join(labels[:5]) + "\n")
    kwargs = dict(batch_size=4, cells_per_set=8, eval_perts=str(eval_fpath), seed=2)
    single = cell_sets.make_cellset_data([sim_fpath], **kwargs)
    expected = collections.Counter((single.pert_names[g.pert], single.context_names[g.context]) for g in single.eval_groups)
    assert len(expected) == single.n_eval_sets == 10  # 5 perturbations x 2 contexts
    seen: collections.Counter = collections.Counter()
    n_padding, n_batches, train_sets = 0, [], []
    for rank in range(process_count):
        data = cell_sets.make_cellset_data([sim_fpath], process_index=rank, process_count=process_count, **kwargs)
        batches = batches_to_numpy(data.eval_batches())
        n_batches.append(len(batches))
        for batch in batches:
            for pert, context, mask in zip(batch["pert"], batch["cell_line"], batch["_mask"], strict=True):
                if mask:
                    seen[data.pert_names[pert], data.context_names[context]] += 1
                else:
                    n_padding += 1
        train_sets.append({tuple(x.rows_s) for x in data.iter_train_sets(0)})
        assert data.steps_per_epoch == single.n_train_sets // process_count // 4
    assert seen == expected
    assert len(set(n_batches)) == 1 and n_padding == n_batches[0] * 4 * process_count - 10
    for i in range(process_count):  # training slices are disjoint across processes
        for j in range(i + 1, process_count):
            assert not train_sets[i] & train_sets[j]


def test_several_files_keep_controls_within_their_file(tmp_path) -> None:
    f1 = write_h5ad(str(tmp_path / "a.h5ad"), make_counts(120, 8, seed=1), make_obs(120, seed=1, contexts=("A",)))
    f2 = write_h5ad(str(tmp_path / "b.h5ad"), make_counts(120, 8, seed=2), make_obs(120, seed=2, contexts=("A", "C")))
    data = cell_sets.make_cellset_data([f1, f2], batch_size=4, cells_per_set=8, transform="none")
    assert data.context_names == ["A", "C"]
    sets = list(data.iter_train_sets(0))
    assert {x.file_idx for x in sets} == {0, 1}
    for x in sets:
        reader = data.files[x.file_idx]
        assert {reader.pert_categories[c] for c in reader.pert_codes_n[x.ctrl_s]} == {"non-targeting"}
    batch = data.make_batch(sets[:4])
    for i, x in enumerate(sorted(sets[:4], key=lambda s: s.file_idx)):  # a batch groups its sets by file
        np.testing.assert_array_equal(batch["target"][i].numpy(), data.files[x.file_idx].read_rows(x.rows_s))
        np.testing.assert_array_equal(batch["ctrl"][i].numpy(), data.files[x.file_idx].read_rows(x.ctrl_s))


def test_simulated_effects_are_stored_and_recoverable(sim_fpath) -> None:
    adata = anndata.read_h5ad(sim_fpath)
    effects = adata.uns["true_effects"]
    assert set(effects.columns) >= {"target_gene", "gene", "log2fc"}
    assert adata.var["gene_id"].str.match(r"ENSG\d{11}\.\d+$").all()
    # The knock-down of each target gene shows in mean log1p expression against controls.
    x_ng = log1p_normalize(adata.X.toarray())
    ctrl_g = x_ng[(adata.obs["target_gene"] == "non-targeting").to_numpy()].mean(axis=0)
    own = effects[effects["target_gene"] == effects["gene"]]
    drops = []
    for target in own["target_gene"]:
        cells = (adata.obs["target_gene"] == target).to_numpy()
        if cells.sum() >= 20:
            g = adata.var_names.get_loc(target)
            drops.append(x_ng[cells, g].mean() - ctrl_g[g])
    assert drops and np.mean(np.array(drops) < 0) > 0.9


def test_auto_transform_takes_shallow_integer_counts_as_counts(tmp_path) -> None:
    """Integer values are counts whatever their maximum: a shallow screen (max below 20) is normalized + log1p, not refused as ambiguous."""
    x_ng = np.minimum(make_counts(200, 30), 12).astype(np.float32)
    assert 1 < x_ng.max() <= 12
    fpath = write_h5ad(str(tmp_path / "shallow.h5ad"), x_ng, make_obs(200))
    assert h5ad.H5adFile(fpath).transform == "log1p"


@pytest.mark.parametrize("where", ["raw/X", "layers/counts"])
def test_counts_in_raw_or_a_layer_read_like_the_same_counts_in_x(tmp_path, where):
    """`--h5ad_matrix raw/X` (genes from raw/var, here a superset of var) or `layers/NAME`: the same rows, transformed the same way, as a
    file with those counts in X; without the flag the error names the matrices the file has and the flag."""
    import anndata

    counts_fpath = simulate_h5ad.simulate_h5ad(str(tmp_path / "counts.h5ad"), n_cells=300, n_genes=30, n_perts=4, seed=2)
    counts = anndata.read_h5ad(counts_fpath)
    x = np.asarray(counts.X.todense(), np.float32)
    keep = np.arange(0, 30, 2)  # X holds log1p of half the genes, as a typical processed file
    moved = anndata.AnnData(X=np.log1p(x[:, keep]), obs=counts.obs, var=counts.var.iloc[keep].copy())
    if where == "raw/X":
        moved.raw = anndata.AnnData(X=x, obs=counts.obs, var=counts.var)
    else:
        moved = anndata.AnnData(X=np.log1p(x), obs=counts.obs, var=counts.var, layers={"counts": x})
    fpath = str(tmp_path / "moved.h5ad")
    moved.write_h5ad(fpath)
    ref = h5ad.H5adFile(counts_fpath, transform="log1p")
    got = h5ad.H5adFile(fpath, transform="log1p", matrix=where)
    assert got.gene_symbols == ref.gene_symbols and got.n_genes_file == 30
    rows = np.array([0, 5, 17, 299])
    want_ng, got_ng = np.empty((4, 30), np.float32), np.empty((4, 30), np.float32)
    ref.read_rows_into(rows, want_ng)
    got.read_rows_into(rows, got_ng)
    assert got.target_sum == ref.target_sum  # the same median total count
    np.testing.assert_allclose(got_ng, want_ng, rtol=1e-6, atol=0)  # dense (layer) vs CSR arithmetic: float32 rounding only
    with pytest.raises(ValueError, match=r"no layers/missing matrix; found X, .*or read it in place with --h5ad_matrix X"):
        h5ad.H5adFile(fpath, matrix="layers/missing")
    with pytest.raises(ValueError, match=r"--h5ad_matrix 'counts' is not X, raw/X or layers/NAME"):
        h5ad.H5adFile(fpath, matrix="counts")


def test_target_sum_reaches_every_file(sim_fpath):
    """`--h5ad_target_sum` (here 1e4, cell-load's choice) is what each file normalizes to; the default is each file's own median."""
    fixed = cell_sets.make_cellset_data([sim_fpath], batch_size=2, cells_per_set=8, target_sum=1e4)
    median = cell_sets.make_cellset_data([sim_fpath], batch_size=2, cells_per_set=8)
    assert [f.target_sum for f in fixed.files] == [1e4]
    assert median.files[0].target_sum != 1e4 and median.describe_vocabulary()["target_sums"] == [median.files[0].target_sum]
    fixed.close()
    median.close()


def test_nan_outside_the_sampled_values_is_found_by_the_full_pass(tmp_path):
    """The open-time check samples ~64k values; counts are normalized with a pass over every value, which finds the rest."""
    import anndata
    import scipy.sparse

    x_ng = make_counts(3000, 300, seed=4)
    csr = scipy.sparse.csr_matrix(x_ng)
    assert csr.nnz > 100_000
    csr.data[12_000] = np.nan  # between the first two sampled windows (starts 0 and ~nnz/7, 8192 values each)
    row = int(np.searchsorted(csr.indptr, 12_000, side="right") - 1)
    fpath = str(tmp_path / "nan.h5ad")
    anndata.AnnData(X=csr, obs=make_obs(3000)).write_h5ad(fpath)
    with pytest.raises(ValueError, match=rf"X holds nan or inf values in 1 cells \(first: row {row}\); clean the matrix"):
        h5ad.H5adFile(fpath)
