"""Batch buffers that are handed out again once nothing refers to them.

Why: a batch of 8 sets x 512 cells x 2,000 genes is 32 MiB; a fresh buffer that size comes from mmap, so each of its 8,192 pages costs a
fault and a zero-fill before the reader writes it (about a fifth of a set's read time on the benchmark file, tools/bench_h5ad.py). A
buffer is idle when the pool's own references are the only ones left: every torch tensor made by `torch.from_numpy` on it or on a view of
it holds a reference to it through numpy's `base`, so a batch the consumer still holds (or a device transfer still reads) is never
reused. `sys.getrefcount` is exact in CPython; the idle count is measured at import, not assumed.
"""

import sys
import threading

import numpy as np


def _measure_idle_refs() -> int:
    """References `get` sees on a buffer nobody else holds: the pool's list, the loop variable and getrefcount's argument."""
    buffers = [np.empty(1, np.float32)]
    for buf in buffers:
        return sys.getrefcount(buf)
    raise AssertionError("unreachable")


IDLE_REFS = _measure_idle_refs()


class BufferPool:
    """Up to `max_buffers` float32 buffers kept for reuse; `get` returns an idle one of the shape, or a new one (kept if there is room)."""

    def __init__(self, max_buffers: int) -> None:
        assert max_buffers >= 0, max_buffers
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.n_allocated = 0  # buffers made by `get`: a pool that works allocates about `max_buffers` over a whole run

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 buffer of `shape` with undefined contents that no one else refers to."""
        with self._lock:
            for buf in self._buffers:
                if buf.shape == shape and sys.getrefcount(buf) == IDLE_REFS:
                    return buf
            self._buffers = [b for b in self._buffers if b.shape == shape or sys.getrefcount(b) != IDLE_REFS]  # drop idle ones of old shapes
            buf = np.empty(shape, np.float32)
            self.n_allocated += 1
            if len(self._buffers) < self.max_buffers:
                self._buffers.append(buf)
            return buf
