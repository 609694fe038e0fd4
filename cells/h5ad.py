"""Read cells from `.h5ad` files with h5py: validated obs columns, var genes, fast row reads, count transforms,
and the gene maps of `cells.genes` applied to the reads.

Why not AnnData backed mode: `adata[idx].X` on a shuffled file issues one HDF5 read per row and tops out near 20 sets/s. Here `X/indptr` stays in RAM and the
nonzeros of all requested rows are gathered in one vectorised step, in order of preference from:
- `memory`: `X/data` and `X/indices` loaded once (`in_memory=True`, or the only fast route for a compressed file);
- `memmap`: uncompressed datasets read through a numpy memmap of the file at the byte offsets HDF5 reports for each chunk, which bypasses the ~15 us per-call
  cost of the HDF5 read path;
- `h5py`: compressed or otherwise unaddressable datasets: sorted rows merged into runs, runs closer than a chunk coalesced into one read, behind an LRU row
  cache (a row read there costs a chunk decode).

Shape letters: n requested rows, g genes (the file's unless said otherwise), m nonzero elements, k chunks.
"""

import collections
import difflib
import logging
import os
import threading

import h5py
import numpy as np

from cells import kernels, storage
from cells.genes import ENSEMBL_RE, GeneMap, strip_version
from cells.storage import ArraySource, ChunkedMemmap, NotMappable

log = logging.getLogger(__name__)

TRANSFORMS = ("auto", "log1p", "none")
# normalize_total's target before log1p: "median" (the median total count of the file's non-empty cells) is scanpy's default
# (`sc.pp.normalize_total(adata)` with target_sum=None) and what cell-eval applies to counts; 1e4 is cell-load's fixed choice.
DEFAULT_TARGET_SUM = "median"
SUMS_CHUNK_ELEMS = 1 << 22  # nonzeros (or dense values) summed per read when computing the cells' total counts


def parse_target_sum(value: str | float) -> str | float:
    """`median` or a positive number (the per-cell total after normalization)."""
    if value == "median":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (number > 0 and np.isfinite(number)):
        raise ValueError(f"--h5ad_target_sum {value!r} is not 'median' or a positive number (e.g. 1e4)")
    return number


# auto transform: non-negative integers above 1 are raw counts (any maximum); non-integer values below this are log1p data (log1p(10^4) ~ 9.2).
AUTO_MAX_THRESHOLD = 20.0
ENSEMBL_COLUMNS = ("gene_id", "gene_ids", "ensembl_id", "ensembl_ids", "gene_ensembl_id", "feature_id", "ensembl")
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "feature_name", "symbol")
H5_CHUNK_CACHE_BYTES = 64 << 20  # decoded-chunk cache of the h5py path (cell-load uses the same 64 MiB)
ROW_CACHE_ELEMS = 1 << 24  # LRU row cache of the h5py path: up to 16M nonzeros (~128 MiB of data + indices)


_NO_COL_MAP = np.zeros(0, np.int32)  # `kernels.densify_rows` with an empty column map keeps the file's gene order


def _common_piece_len(*sources: ArraySource | ChunkedMemmap) -> int | None:
    """The length at which to cut ranges so every piece stays within one chunk of each source: None (no chunks), the smaller chunk length
    when it divides the larger, or -1 when it does not (then the pieces cannot address both arrays)."""
    lens = sorted({s.chunk_len for s in sources if s.chunk_len is not None})
    if not lens:
        return None
    return lens[0] if all(n % lens[0] == 0 for n in lens) else -1


def _close(name: str, options: list[str]) -> str:
    matches = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f"; close matches: {matches}" if matches else "; no close match"


def _read_strings(ds: h5py.Dataset) -> np.ndarray:
    """A string or numeric 1-D dataset as an object array of str."""
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[:], dtype=object)
    return np.asarray([str(v) for v in ds[:]], dtype=object)


def read_obs_column(group: h5py.Group, name: str) -> tuple[np.ndarray, list[str]]:
    """(codes int64 [n] with -1 for missing, categories) of a categorical, string or numeric column in anndata's encoding."""
    item = group[name]
    if isinstance(item, h5py.Group):
        encoding = item.attrs.get("encoding-type", "")
        if encoding == "categorical":
            return item["codes"][:].astype(np.int64), [str(c) for c in _read_strings(item["categories"])]
        if encoding.startswith("nullable"):
            values = _read_strings(item["values"])
            mask = item["mask"][:].astype(bool)
            categories, codes = np.unique(values[~mask], return_inverse=True)
            codes_n = np.full(len(values), -1, np.int64)
            codes_n[~mask] = codes
            return codes_n, [str(c) for c in categories]
        raise ValueError(f"column {group.name}/{name} has encoding {encoding!r}; expected a categorical or string column")
    categories, codes = np.unique(_read_strings(item), return_inverse=True)
    return codes.astype(np.int64), [str(c) for c in categories]


def _looks_ensembl(values: np.ndarray) -> bool:
    sample = values[:: max(1, len(values) // 200)]
    return len(sample) > 0 and np.mean([bool(ENSEMBL_RE.match(v)) for v in sample]) >= 0.5


def read_var_genes(h5: h5py.File, var_path: str = "var") -> tuple[list[str], list[str] | None]:
    """(gene symbols, Ensembl ids without version or None) from `var`: symbols are the index unless it holds Ensembl ids."""
    var = h5[var_path]
    index = _read_strings(var[var.attrs.get("_index", "_index")])
    columns = {k: var[k] for k in var.keys() if k != var.attrs.get("_index", "_index")}

    def column_strings(key: str) -> np.ndarray | None:
        """A string or categorical column as strings; None for any other column (numbers, nullable booleans, ...)."""
        item = columns.get(key)
        is_strings = isinstance(item, h5py.Dataset) and h5py.check_string_dtype(item.dtype) is not None
        if not (is_strings or (isinstance(item, h5py.Group) and item.attrs.get("encoding-type") == "categorical")):
            return None
        codes, categories = read_obs_column(var, key)
        return np.asarray([categories[c] if c >= 0 else "" for c in codes], dtype=object)

    ids = None
    if _looks_ensembl(index):
        ids = index
        index = next((v for v in map(column_strings, SYMBOL_COLUMNS) if v is not None), index)
    else:
        # Named columns first; any other column full of Ensembl ids after (files name it many ways).
        for key in [*ENSEMBL_COLUMNS, *sorted(columns)]:
            values = column_strings(key)
            if values is not None and _looks_ensembl(values):
                ids = values
                break
    return [str(s) for s in index], None if ids is None else [strip_version(str(v)) for v in ids]


def list_matrices(h5: h5py.File) -> list[str]:
    """The expression matrices a file holds, as `--h5ad_matrix` names them: X, raw/X, layers/NAME."""
    layers = h5["layers"].keys() if isinstance(h5.get("layers"), h5py.Group) else ()
    return [name for name in ("X", "raw/X", *(f"layers/{k}" for k in layers)) if name in h5]


def _where_else_matrix(h5: h5py.File, matrix: str) -> str:
    """The fix for a file without the requested matrix: the matrices it does hold, if any."""
    elsewhere = [m for m in list_matrices(h5) if m != matrix]
    if not elsewhere:
        return "; re-save it with the expression matrix in adata.X"
    return (
        f"; found {', '.join(elsewhere)}: re-save with adata.X set to the matrix to train on (e.g. adata.X = adata.raw.X or adata.layers['counts']), "
        f"or read it in place with --h5ad_matrix {elsewhere[0]}"
    )


def check_matrix_name(matrix: str) -> None:
    if matrix not in ("X", "raw/X") and not (matrix.startswith("layers/") and len(matrix) > len("layers/")):
        raise ValueError(f"--h5ad_matrix {matrix!r} is not X, raw/X or layers/NAME (e.g. layers/counts)")


class H5adFile:
    """One `.h5ad` opened with h5py: validated obs codes, var genes, and `read_rows_into` for transformed, gene-mapped dense rows."""

    def __init__(
        self,
        fpath: str,
        *,
        pert_col: str = "target_gene",
        context_col: str = "cell_line",
        control_label: str = "non-targeting",
        transform: str = "auto",
        in_memory: bool = False,
        log_info: bool = True,
        matrix: str = "X",
        target_sum: str | float = DEFAULT_TARGET_SUM,
    ) -> None:
        if not os.path.isfile(fpath):
            parent = os.path.dirname(os.path.abspath(fpath))
            siblings = sorted(f for f in os.listdir(parent) if f.endswith(".h5ad")) if os.path.isdir(parent) else []
            raise FileNotFoundError(f"h5ad file not found: {fpath}; fix --h5ad_path" + (_close(os.path.basename(fpath), siblings) if siblings else ""))
        if transform not in TRANSFORMS:
            raise ValueError(f"--h5ad_transform {transform!r} is not one of {TRANSFORMS}")
        check_matrix_name(matrix)
        target_sum = parse_target_sum(target_sum)
        self.fpath, self.matrix = fpath, matrix
        self._log = log.info if log_info else log.debug
        self._pid = os.getpid()
        try:
            self._h5_handle = self._open()
        except OSError as e:
            raise ValueError(f"--h5ad_path {fpath!r} is not an HDF5 (.h5ad) file ({e}); pass a file written by anndata (adata.write_h5ad)") from e
        h5 = self._h5_handle
        if "obs" not in h5 or not isinstance(h5["obs"], h5py.Group):
            raise ValueError(f"{fpath}: no obs group in anndata>=0.8 encoding (a legacy file: re-save it with a current anndata)")
        if matrix not in h5:
            raise ValueError(f"{fpath}: no {matrix} matrix{_where_else_matrix(h5, matrix)}")
        self._read_labels(h5, pert_col, context_col, control_label)
        self.control_code = self.pert_categories.index(control_label)
        # raw/X has its own genes (raw/var, often more than var); layers share var with X.
        self.gene_symbols, self.gene_ids = read_var_genes(h5, "raw/var" if matrix == "raw/X" else "var")
        self.n_genes_file = len(self.gene_symbols)
        self._setup_matrix(in_memory)
        self.transform = self._resolve_transform(transform)
        self.target_sum = None
        if self.transform == "log1p":
            self.target_sum = self._median_total() if target_sum == "median" else float(target_sum)
            self._log(
                "%s: normalize_total to %g counts per cell (%s), then log1p",
                self.fpath,
                self.target_sum,
                "the file's median" if target_sum == "median" else "--h5ad_target_sum",
            )
        self._file_to_out_g: np.ndarray | None = None
        self.n_genes_out = self.n_genes_file
        self._row_cache: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._row_cache_elems = 0
        self._lock = threading.Lock()

    def _read_labels(self, h5: h5py.File, pert_col: str, context_col: str, control_label: str) -> None:
        """Per-cell perturbation and context codes from obs; the columns and the control label must exist (close matches named)."""
        fpath = self.fpath
        obs = h5["obs"]
        obs_columns = sorted(k for k in obs.keys() if k != obs.attrs.get("_index", "_index"))
        for col, flag in ((pert_col, "--pert_col"), (context_col, "--context_col")):
            if col not in obs:
                raise ValueError(f"{fpath}: obs has no column {col!r} ({flag}); obs columns: {obs_columns}" + _close(col, obs_columns))
        self.pert_codes_n, self.pert_categories = read_obs_column(obs, pert_col)
        self.context_codes_n, self.context_categories = read_obs_column(obs, context_col)
        if control_label not in self.pert_categories or not np.any(self.pert_codes_n == self.pert_categories.index(control_label)):
            counts = np.bincount(self.pert_codes_n[self.pert_codes_n >= 0], minlength=len(self.pert_categories))
            frequent = [f"{self.pert_categories[i]} ({counts[i]} cells)" for i in np.argsort(-counts)[:5]]
            raise ValueError(
                f"{fpath}: control label {control_label!r} (--control_label) has no cells in obs[{pert_col!r}]; most frequent labels: {frequent}"
                + _close(control_label, self.pert_categories)
            )

    def _open(self) -> h5py.File:
        return h5py.File(self.fpath, "r", rdcc_nbytes=H5_CHUNK_CACHE_BYTES, rdcc_nslots=1_000_003, rdcc_w0=0.75)

    @property
    def _h5(self) -> h5py.File:
        """The h5py handle, reopened after a fork: HDF5 handles must not cross process boundaries."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._h5_handle = self._open()
        return self._h5_handle

    def _setup_matrix(self, in_memory: bool) -> None:
        x = self._h5[self.matrix]
        self.sparse = isinstance(x, h5py.Group)
        if self.sparse:
            encoding = x.attrs.get("encoding-type", "")
            if encoding != "csr_matrix":
                raise ValueError(f"{self.fpath}: X is {encoding!r}; only csr_matrix or dense X can be read by rows (convert with adata.X = adata.X.tocsr())")
            self.n_cells = int(x.attrs["shape"][0])
            self._indptr = x["indptr"][:].astype(np.int64)
        else:
            self.n_cells = int(x.shape[0])
        n_genes = int(x.attrs["shape"][1]) if self.sparse else int(x.shape[1])
        assert n_genes == self.n_genes_file, f"{self.fpath}: X has {n_genes} genes but var has {self.n_genes_file}"
        assert len(self.pert_codes_n) == self.n_cells, f"{self.fpath}: obs has {len(self.pert_codes_n)} rows but X has {self.n_cells}"
        compressed = any(ds.compression for ds in ([x["data"], x["indices"]] if self.sparse else [x]))
        if in_memory:
            self.backend = "memory"
            if self.sparse:
                self._data_src, self._indices_src = ArraySource(x["data"][:]), ArraySource(x["indices"][:])
            else:
                self._dense_src = x[:]
            n_bytes = sum(a.view.nbytes for a in (self._data_src, self._indices_src)) if self.sparse else self._dense_src.nbytes
            self._log("%s: loaded X into RAM (%.0f MiB)", self.fpath, n_bytes / 2**20)
        else:
            try:
                if self.sparse:
                    self._data_src, self._indices_src = ChunkedMemmap(self.fpath, x["data"]), ChunkedMemmap(self.fpath, x["indices"])
                else:
                    if x.chunks is not None or x.compression or x.id.get_offset() is None:
                        raise NotMappable("chunked dense X")
                    self._dense_src = np.memmap(self.fpath, dtype=x.dtype, mode="r", offset=x.id.get_offset(), shape=x.shape)
                self.backend = "memmap"
            except NotMappable:
                self.backend = "h5py"
                if compressed:
                    log.warning(
                        "%s: X is compressed; every random row read inflates a whole chunk. Pass --h5ad_in_memory to decode it once if it fits in RAM, "
                        "or rewrite it uncompressed.",
                        self.fpath,
                    )
        self._log("%s: %d cells x %d genes, %s X, read via %s", self.fpath, self.n_cells, self.n_genes_file, "CSR" if self.sparse else "dense", self.backend)

    def _median_total(self) -> float:
        """The median total count of the file's non-empty cells (scanpy's normalize_total target when target_sum is None), one pass over X."""
        x = self._h5[self.matrix]
        totals_n = np.zeros(self.n_cells, np.float64)
        if self.sparse:
            data, nnz = x["data"], int(self._indptr[-1])
            for a in range(0, nnz, SUMS_CHUNK_ELEMS):
                b = min(a + SUMS_CHUNK_ELEMS, nnz)
                rows_m = np.searchsorted(self._indptr, np.arange(a, b), side="right") - 1
                totals_n += np.bincount(rows_m, weights=np.asarray(data[a:b], np.float64), minlength=self.n_cells)
        else:
            step = max(1, SUMS_CHUNK_ELEMS // max(1, self.n_genes_file))
            for a in range(0, self.n_cells, step):
                totals_n[a : a + step] = np.asarray(x[a : a + step], np.float64).sum(axis=1)
        # This pass reads every value, so it also finds the nan/inf that the sampled check at open time can miss.
        bad_n = ~np.isfinite(totals_n)
        if bad_n.any():
            raise ValueError(
                f"{self.fpath}: {self.matrix} holds nan or inf values in {int(bad_n.sum())} cells (first: row {int(np.flatnonzero(bad_n)[0])}); "
                "clean the matrix (e.g. np.nan_to_num) and save the file again: no transform makes them trainable"
            )
        nonzero_n = totals_n[totals_n > 0]
        if len(nonzero_n) == 0:
            raise ValueError(f"{self.fpath}: every cell of {self.matrix} has zero counts; nothing to normalize")
        return float(np.median(nonzero_n))

    def _sample_values(self) -> np.ndarray:
        """Up to ~64k stored values from 8 places spread over X (cheap whatever the backend)."""
        x = self._h5[self.matrix]
        if self.sparse:
            ds, n, width = x["data"], x["data"].shape[0], 8192
        else:
            ds, n, width = x, self.n_cells, max(1, 8192 // max(1, self.n_genes_file))
        starts = np.unique(np.linspace(0, max(0, n - width), 8).astype(np.int64))
        return np.concatenate([np.asarray(ds[s : s + width], np.float64).ravel() for s in starts]) if n else np.zeros(0)

    def _resolve_transform(self, transform: str) -> str:
        if transform != "auto":
            self._log("%s: --h5ad_transform %s", self.fpath, transform)
            return transform
        values = self._sample_values()
        n_bad = int(np.sum(~np.isfinite(values)))
        if n_bad:
            raise ValueError(
                f"{self.fpath}: X holds nan or inf values ({n_bad} of {len(values)} sampled values); clean the matrix (e.g. np.nan_to_num) and save the file "
                "again: no transform makes them trainable"
            )
        values = values[values != 0]
        if len(values) == 0:
            raise ValueError(
                f"{self.fpath}: cannot tell raw counts from log1p data: the sampled values of X are all zero; pass --h5ad_transform log1p (raw counts) or "
                "none (already normalized)"
            )
        is_integer = bool(np.all(values == np.round(values)))
        vmin, vmax = float(values.min()), float(values.max())
        if (
            is_integer and vmin >= 0 and vmax > 1
        ):  # log1p data is never all integers, whatever its maximum (a shallow screen's counts may stay below 20); 0/1 alone may be a binary matrix
            self._log("%s: X looks like raw counts (integers, max %g): normalize_total + log1p per cell", self.fpath, vmax)
            return "log1p"
        if not is_integer and vmax < AUTO_MAX_THRESHOLD and vmin >= 0:
            self._log("%s: X looks log1p-normalized already (non-integer, max %.3g): no transform", self.fpath, vmax)
            return "none"
        raise ValueError(
            f"{self.fpath}: cannot tell raw counts from log1p data (sampled {len(values)} nonzeros: {'integers' if is_integer else 'non-integers'}, "
            f"min {vmin:g}, max {vmax:g}); pass --h5ad_transform log1p (raw counts: normalize_total + log1p) or none (use X as stored)"
        )

    def set_gene_map(self, gene_map: GeneMap | None) -> None:
        """Read rows onto a vocab's gene order (None: the file's own order)."""
        if gene_map is None:
            self._file_to_out_g, self.n_genes_out = None, self.n_genes_file
            return
        file_to_out_g = np.full(self.n_genes_file, -1, np.int32 if len(gene_map.vocab_to_file_g) < 2**31 else np.int64)
        matched = gene_map.vocab_to_file_g >= 0
        file_to_out_g[gene_map.vocab_to_file_g[matched]] = np.flatnonzero(matched)
        self._file_to_out_g, self.n_genes_out = file_to_out_g, len(gene_map.vocab_to_file_g)

    def read_rows(self, rows_n: np.ndarray) -> np.ndarray:
        """Dense float32 [n, g_out] rows, transformed and gene-mapped, in the requested order."""
        out_ng = np.empty((len(rows_n), self.n_genes_out), np.float32)
        self.read_rows_into(np.asarray(rows_n, np.int64), out_ng)
        return out_ng

    def read_rows_into(self, rows_n: np.ndarray, out_ng: np.ndarray) -> None:
        """Write row `rows_n[i]` (transformed, gene-mapped) into `out_ng[i]`, zeros included: `out_ng` may be uninitialised."""
        assert out_ng.dtype == np.float32 and out_ng.flags.c_contiguous and out_ng.shape == (len(rows_n), self.n_genes_out), (
            out_ng.dtype,
            out_ng.shape,
            len(rows_n),
            self.n_genes_out,
        )
        if len(rows_n) == 0:
            return
        assert rows_n.min() >= 0 and rows_n.max() < self.n_cells, f"row index out of range [0, {self.n_cells})"
        if not self.sparse:
            self._read_dense_into(rows_n, out_ng)
            return
        data_m, data_addr_q, indices_m, indices_addr_q, len_q, qptr_n = self._csr_pieces(rows_n)
        target_sum = self.target_sum if self.transform == "log1p" else 0.0
        col_map_g = _NO_COL_MAP if self._file_to_out_g is None else self._file_to_out_g
        kernels.densify_rows(data_m, indices_m, data_addr_q, indices_addr_q, len_q, qptr_n, float(target_sum), col_map_g, out_ng)

    def _csr_pieces(self, rows_n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(data, data positions, indices, indices positions, lengths, row pointer) of the requested rows' nonzeros, as `kernels.densify_rows` reads them.

        memmap and RAM: pieces address the file's mapping (or the arrays in RAM) directly, cut where a chunk of either array ends; otherwise (h5py reads, chunk
        sizes that do not divide each other, chunks at mixed byte residues) the nonzeros are gathered first and the pieces address the gathered copy.
        """
        starts_n = self._indptr[rows_n]
        lens_n = self._indptr[rows_n + 1] - starts_n
        piece_len = _common_piece_len(self._data_src, self._indices_src) if self.backend != "h5py" else -1
        if piece_len != -1 and self._data_src.view is not None and self._indices_src.view is not None:
            start_q, len_q, qptr_n = storage.split_ranges(starts_n, lens_n, piece_len)
            return self._data_src.view, self._data_src.addresses(start_q), self._indices_src.view, self._indices_src.addresses(start_q), len_q, qptr_n
        data_m, cols_m, lens_n = self._gather_csr(rows_n)
        qptr_n = np.arange(len(lens_n) + 1, dtype=np.int64)
        addr_n = np.cumsum(lens_n) - lens_n
        return data_m, addr_n, cols_m, addr_n, lens_n.astype(np.int64), qptr_n

    def _gather_csr(self, rows_n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(data [m], column indices [m], nonzeros per row [n]) of the rows in the requested order (duplicates allowed)."""
        starts_n = self._indptr[rows_n]
        lens_n = self._indptr[rows_n + 1] - starts_n
        if self.backend != "h5py":
            # memmap and RAM: a gather in request order costs the same as a sorted one and needs no permutation back.
            return self._data_src.take_ranges(starts_n, lens_n), self._indices_src.take_ranges(starts_n, lens_n), lens_n
        unique_u = np.unique(rows_n)
        with self._lock:
            # Take cached rows out before inserting new ones: the inserts may evict them.
            cached = {int(r): self._cache_get(int(r)) for r in unique_u if int(r) in self._row_cache}
        missing_u = np.asarray([r for r in unique_u if int(r) not in cached], np.int64)
        fetched = self._fetch_h5py_rows(missing_u) if len(missing_u) else {}
        with self._lock:
            for row, item in fetched.items():
                self._cache_put(row, item)
        cached.update(fetched)
        pieces = [cached[int(r)] for r in rows_n]
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]), lens_n

    def _fetch_h5py_rows(self, rows_u: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Read sorted unique rows with one h5py slice per run; runs closer than a chunk share a read (the chunk is decoded anyway)."""
        assert np.all(rows_u[1:] > rows_u[:-1]), "rows must be sorted and unique before an h5py read"
        x = self._h5[self.matrix]
        data_ds, indices_ds = x["data"], x["indices"]
        gap = data_ds.chunks[0] if data_ds.chunks else 8192  # uncontiguous reads of < 32 KB cost less than another ~15 us call
        starts_u, ends_u = self._indptr[rows_u], self._indptr[rows_u + 1]
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        run_first = 0
        for i in range(1, len(rows_u) + 1):
            if i < len(rows_u) and starts_u[i] - ends_u[i - 1] <= gap:
                continue
            a, b = int(starts_u[run_first]), int(ends_u[i - 1])
            data_run, indices_run = data_ds[a:b], indices_ds[a:b]
            for j in range(run_first, i):
                s, e = starts_u[j] - a, ends_u[j] - a
                out[int(rows_u[j])] = (data_run[s:e], indices_run[s:e])
            run_first = i
        return out

    def _cache_put(self, row: int, item: tuple[np.ndarray, np.ndarray]) -> None:
        self._row_cache[row] = item
        self._row_cache_elems += len(item[0])
        while self._row_cache_elems > ROW_CACHE_ELEMS and len(self._row_cache) > 1:
            _, old = self._row_cache.popitem(last=False)
            self._row_cache_elems -= len(old[0])

    def _cache_get(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        self._row_cache.move_to_end(row)
        return self._row_cache[row]

    def _read_dense_into(self, rows_n: np.ndarray, out_ng: np.ndarray) -> None:
        src = self._dense_src if self.backend != "h5py" else self._h5[self.matrix]
        unique_u, inverse_n = np.unique(rows_n, return_inverse=True)
        assert np.all(unique_u[1:] > unique_u[:-1]), "rows must be sorted before reading"
        if self.backend == "h5py":
            gap = src.chunks[0] if src.chunks else max(1, 32768 // (4 * self.n_genes_file))  # reading a gap below ~32 KB costs less than another call
        else:
            gap = 1  # memmap and RAM: a slice costs ~1 us, reading a gap is pure waste
        parts: list[np.ndarray] = []
        run_first = 0
        for i in range(1, len(unique_u) + 1):
            if i < len(unique_u) and unique_u[i] - unique_u[i - 1] <= gap:
                continue
            a, b = int(unique_u[run_first]), int(unique_u[i - 1]) + 1
            parts.append(np.asarray(src[a:b])[unique_u[run_first:i] - a])
            run_first = i
        x_ng = np.concatenate(parts).astype(np.float32)[inverse_n]
        if self.transform == "log1p":
            sums_n = x_ng.sum(axis=1, dtype=np.float64, keepdims=True)
            x_ng = np.log1p(x_ng * np.where(sums_n > 0, self.target_sum / np.maximum(sums_n, 1e-12), 0.0)).astype(np.float32)
        if self._file_to_out_g is None:
            out_ng[...] = x_ng
            return
        keep_g = self._file_to_out_g >= 0
        out_ng.fill(0)
        out_ng[:, self._file_to_out_g[keep_g]] = x_ng[:, keep_g]

    def close(self) -> None:
        self._h5_handle.close()
