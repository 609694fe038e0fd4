"""The compiled CSR row reader over the storage layouts files really have (chunk sizes that differ between `data` and `indices`, integer
and float64 values, int64 indices, rows across chunk ends, empty and repeated rows), and the batch buffer pool's reuse rule."""

import h5py
import numpy as np
import pytest
import torch

from cells import buffers, h5ad
from cells import sets as cell_sets
from tests.test_h5ad import log1p_normalize, make_counts, make_obs, write_h5ad


def rewrite_csr(fpath: str, *, data_chunk: int, indices_chunk: int, data_dtype: str, indices_dtype: str) -> None:
    """Store X/data and X/indices again with the given chunk lengths and dtypes (anndata's encoding otherwise unchanged)."""
    with h5py.File(fpath, "r+") as fd:
        for name, chunk, dtype in (("data", data_chunk, data_dtype), ("indices", indices_chunk, indices_dtype)):
            values = fd["X"][name][:].astype(dtype)
            del fd["X"][name]
            fd["X"].create_dataset(name, data=values, chunks=(chunk,))


@pytest.mark.parametrize(
    "data_chunk, indices_chunk, data_dtype, indices_dtype",
    [(256, 1024, "float32", "int32"), (1000, 300, "int32", "int64"), (512, 512, "float64", "int32")],
    ids=["chunks-divide", "chunks-do-not-divide", "float64-values"],
)
@pytest.mark.parametrize("transform", ["none", "log1p"])
def test_rows_read_through_any_chunk_layout_equal_the_matrix(tmp_path, data_chunk, indices_chunk, data_dtype, indices_dtype, transform) -> None:
    x_ng = make_counts(700, 90, seed=4)
    x_ng[[3, 10]] = 0  # empty rows
    fpath = write_h5ad(str(tmp_path / "c.h5ad"), x_ng, make_obs(700))
    rewrite_csr(fpath, data_chunk=data_chunk, indices_chunk=indices_chunk, data_dtype=data_dtype, indices_dtype=indices_dtype)
    reader = h5ad.H5adFile(fpath, transform=transform, target_sum=1e4)
    assert reader.backend == "memmap"
    rows_n = np.concatenate([[3, 10, 3], np.random.default_rng(2).integers(0, 700, 300)])  # unsorted, repeated and empty rows
    with h5py.File(fpath) as fd:
        indptr = fd["X/indptr"][:]
        assert np.any(indptr[rows_n] // data_chunk != (indptr[rows_n + 1] - 1) // data_chunk), "no requested row crosses a chunk end"
    expected_ng = x_ng if transform == "none" else log1p_normalize(x_ng, 1e4)
    np.testing.assert_allclose(reader.read_rows(rows_n), expected_ng[rows_n], rtol=1e-6, atol=0)


def test_gene_map_drops_and_reorders_columns_in_the_compiled_reader(tmp_path) -> None:
    x_ng = make_counts(300, 40, seed=5)
    fpath = write_h5ad(str(tmp_path / "g.h5ad"), x_ng, make_obs(300))
    data = cell_sets.make_cellset_data([fpath], cells_per_set=8, batch_size=2, transform="none")
    reader = data.files[0]
    vocab_to_file_g = np.array([39, -1, 0, 7, 20])  # out of order, a missing gene (zeros); the other 36 file genes dropped
    reader.set_gene_map(h5ad.GeneMap(vocab_to_file_g=vocab_to_file_g, n_matched=4, n_ambiguous=0, n_missing=1))
    rows_n = np.array([5, 0, 299, 5])
    got_ng = reader.read_rows(rows_n)
    expected_ng = np.where(vocab_to_file_g >= 0, x_ng[rows_n][:, np.maximum(vocab_to_file_g, 0)], 0)
    assert expected_ng[:, [0, 2, 3, 4]].any() and got_ng.shape == (4, 5)
    np.testing.assert_array_equal(got_ng, expected_ng)
    data.close()


def test_buffer_pool_reuses_a_buffer_only_when_nothing_holds_it() -> None:
    pool = buffers.BufferPool(2)
    first = pool.get((2, 3))
    held = torch.from_numpy(first[1])  # a tensor on a view, as a batch hands out
    first_id = id(first)
    del first
    second = pool.get((2, 3))
    assert id(second) != first_id, "a buffer behind a live tensor was handed out again"
    del held
    third = pool.get((2, 3))
    assert id(third) == first_id, "an idle buffer was not reused"
    del second, third
    assert pool.n_allocated == 2
    assert pool.get((4,)).shape == (4,)  # a new shape replaces idle buffers of the old one
    assert pool.n_allocated == 3


def test_batches_from_reused_buffers_stay_intact_while_held(tmp_path) -> None:
    """A consumer that keeps every batch (a list, a queue of device transfers) must see each batch as it was read."""
    x_ng = make_counts(400, 30, seed=6)
    fpath = write_h5ad(str(tmp_path / "k.h5ad"), x_ng, make_obs(400))
    data = cell_sets.make_cellset_data([fpath], cells_per_set=8, batch_size=2, transform="none", seed=0)
    kept = list(data.train_batches(0))
    fresh = [data.make_batch(chunk) for chunk in data._chunks(data.iter_train_sets(0))]
    assert len(kept) == data.steps_per_epoch > 3
    for a, b in zip(kept, fresh, strict=True):
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["ctrl"], b["ctrl"])
    data.close()
