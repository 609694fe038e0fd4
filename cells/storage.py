"""Fast reads of an HDF5 dataset's element ranges: a plain in-memory array, or a memmap of an uncompressed dataset's chunks in the file.

`ChunkedMemmap` bypasses the ~15 us per-call cost of the HDF5 read path: it maps the file at the byte offsets HDF5 reports for each
chunk. Shape letters: n ranges, k chunks, q range pieces, m elements.

How a list of ranges is copied out (`gather_ranges`): one slice per range joined by `np.concatenate` (a memcpy per range, ~0.5 us
of Python per range) when ranges are long, one `np.take` over an index of every element (~4 ns per element, no per-range cost)
when they are short. A CSR row of a single-cell file holds hundreds to thousands of nonzeros, so the slices win there by about 2x.
"""

import os

import h5py
import numpy as np


def concat_ranges(starts_n: np.ndarray, lens_n: np.ndarray) -> np.ndarray:
    """Indices of all elements of the ranges [start, start + len), concatenated in order, without a Python loop."""
    ends_n = np.cumsum(lens_n)
    return np.arange(int(ends_n[-1]) if len(ends_n) else 0, dtype=np.int64) + np.repeat(starts_n - (ends_n - lens_n), lens_n)


SLICE_MIN_MEAN_LEN = 128  # mean elements per range from which per-range slices beat one np.take (measured crossover ~120 on 2 cores)


def gather_ranges(flat_m: np.ndarray, starts_n: np.ndarray, lens_n: np.ndarray) -> np.ndarray:
    """Elements of `flat_m` in the ranges [start, start + len), concatenated in order."""
    if len(lens_n) == 0:
        return flat_m[:0].copy()
    if int(lens_n.sum()) < SLICE_MIN_MEAN_LEN * len(lens_n):
        return np.take(flat_m, concat_ranges(starts_n, lens_n))
    ends_n = starts_n + lens_n
    return np.concatenate([flat_m[a:b] for a, b in zip(starts_n.tolist(), ends_n.tolist(), strict=True)])


class NotMappable(Exception):
    """The dataset cannot be read through a memmap (compressed, unallocated chunks, external storage)."""


def split_ranges(starts_n: np.ndarray, lens_n: np.ndarray, piece_len: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start_q, len_q, qptr_n): the ranges cut where a multiple of `piece_len` falls inside them (None: not cut); range i is pieces
    qptr_n[i] .. qptr_n[i + 1] - 1, and an empty range has no piece."""
    starts_n, lens_n = np.asarray(starts_n, np.int64), np.asarray(lens_n, np.int64)
    if piece_len is None:
        n_pieces = (lens_n > 0).astype(np.int64)
    else:
        n_pieces = np.where(lens_n > 0, (starts_n + lens_n - 1) // piece_len - starts_n // piece_len + 1, 0)
    qptr_n = np.zeros(len(lens_n) + 1, np.int64)
    np.cumsum(n_pieces, out=qptr_n[1:])
    if piece_len is None or np.all(n_pieces <= 1):
        keep = n_pieces > 0
        return starts_n[keep], lens_n[keep], qptr_n
    # Piece j of a range lies in block first + j.
    range_q = np.repeat(np.arange(len(starts_n)), n_pieces)
    block_q = starts_n[range_q] // piece_len + np.arange(len(range_q)) - qptr_n[range_q]
    start_q = np.maximum(starts_n[range_q], block_q * piece_len)
    len_q = np.minimum(starts_n[range_q] + lens_n[range_q], (block_q + 1) * piece_len) - start_q
    return start_q, len_q, qptr_n


class ChunkedMemmap:
    """Read ranges of an uncompressed 1-D HDF5 dataset through memmaps of the file at each chunk's byte offset.

    HDF5 interleaves B-tree nodes between chunks, so chunks are not one contiguous block even when written in one call: a range is split at chunk boundaries and
    each piece is read at `chunk_base[k] + offset` of a memmap that starts at the chunk's byte residue modulo the item size (one memmap when all chunks share
    it, the usual case). `view` is that memmap (or a plain view of a contiguous dataset) and `addresses` maps dataset positions of pieces that stay within one
    chunk of `chunk_len` elements to positions in `view`; `view` is None when chunks sit at different residues.
    """

    def __init__(self, fpath: str, ds: h5py.Dataset) -> None:
        plist = ds.id.get_create_plist()
        if plist.get_nfilters() > 0 or plist.get_external_count() > 0 or ds.ndim != 1 or ds.shape[0] == 0:
            raise NotMappable(f"{ds.name}: empty, filtered or external storage")
        dtype, n = ds.dtype, ds.shape[0]
        itemsize = dtype.itemsize
        fsize = os.path.getsize(fpath)
        self.chunk_len: int | None = None
        if ds.chunks is None:
            offset = ds.id.get_offset()
            if offset is None:
                raise NotMappable(f"{ds.name}: contiguous dataset without storage")
            self.view: np.ndarray | None = np.asarray(np.memmap(fpath, dtype=dtype, mode="r", offset=offset, shape=(n,)))
            return
        chunk_len = ds.chunks[0]
        offsets_k = np.full(-(-n // chunk_len), -1, np.int64)

        def record(info: h5py.h5d.StoreInfo) -> None:
            offsets_k[info.chunk_offset[0] // chunk_len] = info.byte_offset

        if hasattr(ds.id, "chunk_iter"):
            ds.id.chunk_iter(record)  # one B-tree walk instead of a lookup per chunk
        else:
            for i in range(ds.id.get_num_chunks()):
                record(ds.id.get_chunk_info(i))
        if (offsets_k < 0).any():
            raise NotMappable(f"{ds.name}: unallocated chunks")
        self._residue_k = offsets_k % itemsize
        self._residues = [int(r) for r in np.unique(self._residue_k)]
        # np.asarray drops the memmap subclass: indexing a plain ndarray view is ~2x faster.
        self._mm = {r: np.asarray(np.memmap(fpath, dtype=dtype, mode="r", offset=r, shape=((fsize - r) // itemsize,))) for r in self._residues}
        self._base_k = (offsets_k - self._residue_k) // itemsize
        if len(self._residues) == 1 and np.all(np.diff(self._base_k) == chunk_len):
            # Chunks back to back in order (e.g. after h5repack): one plain view, nothing to cut.
            self.view = self._mm[self._residues[0]][self._base_k[0] : self._base_k[0] + n]
            return
        self.chunk_len = chunk_len
        self.view = self._mm[self._residues[0]] if len(self._residues) == 1 else None
        self._shift_k = self._base_k - np.arange(len(self._base_k)) * chunk_len  # view position = dataset position + shift of its chunk

    def addresses(self, start_q: np.ndarray) -> np.ndarray:
        """Positions in `view` of dataset positions (pieces that stay within one chunk)."""
        if self.chunk_len is None:
            return start_q
        return start_q + self._shift_k[start_q // self.chunk_len]

    def take_ranges(self, starts_n: np.ndarray, lens_n: np.ndarray) -> np.ndarray:
        """Elements of the ranges [start, start + len), concatenated in order."""
        start_q, len_q, _ = split_ranges(starts_n, lens_n, self.chunk_len)
        if self.view is not None:
            return gather_ranges(self.view, self.addresses(start_q), len_q)
        chunk_q = start_q // self.chunk_len
        addr_q = start_q + self._shift_k[chunk_q]
        out_m = np.empty(int(len_q.sum()), next(iter(self._mm.values())).dtype)
        out_start_q = np.cumsum(len_q) - len_q
        residue_q = self._residue_k[chunk_q]
        for r in self._residues:
            sel = residue_q == r
            out_m[concat_ranges(out_start_q[sel], len_q[sel])] = gather_ranges(self._mm[r], addr_q[sel], len_q[sel])
        return out_m


class ArraySource:
    """`take_ranges`, `view` and `addresses` over an in-memory array, so every backend of the CSR gather looks the same."""

    chunk_len = None

    def __init__(self, values: np.ndarray) -> None:
        self.view = values

    def addresses(self, start_q: np.ndarray) -> np.ndarray:
        return start_q

    def take_ranges(self, starts_n: np.ndarray, lens_n: np.ndarray) -> np.ndarray:
        return gather_ranges(self.view, starts_n, lens_n)
