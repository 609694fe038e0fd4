"""The compiled inner loop of CSR row reads: copy the nonzeros of requested rows straight from the file's memory map into dense output rows.

Why a compiled loop: a set of 512 cells is ~1,000 scattered runs of nonzeros. In numpy every run costs a Python-level slice (~0.5 us) or
every element an index entry (`np.take`, ~4 ns), then a second pass densifies; here one pass per row sums (for normalization), transforms
and scatters, and the row being written stays in L1. `nogil` lets reader threads run it in parallel. Compiled once per dtype combination
and cached next to this file (numba's `cache=True`).

Shape letters: n output rows, q row pieces (a row's nonzeros split where a storage chunk ends), g output genes.
"""

import math

import numba
import numpy as np

AHEAD = 4  # pieces between a touch of a piece's first values and its copy: the cache misses of the next rows overlap this row's work


@numba.njit(nogil=True, cache=True, boundscheck=False)
def densify_rows(
    data_m: np.ndarray,
    indices_m: np.ndarray,
    data_addr_q: np.ndarray,
    indices_addr_q: np.ndarray,
    len_q: np.ndarray,
    qptr_n: np.ndarray,
    target_sum: float,
    col_map_g: np.ndarray,
    out_ng: np.ndarray,
) -> float:
    """Dense rows from CSR pieces: row i is made of pieces qptr_n[i] .. qptr_n[i + 1] - 1; piece q holds `len_q[q]` values at
    `data_m[data_addr_q[q]:]` with their columns at `indices_m[indices_addr_q[q]:]`.

    target_sum > 0: normalize each row to that total over all of its values, then log1p (float64 sum, float32 scale and product, log1p
    rounded to float32 from float64: within 1 ulp of numpy's float32 log1p, which is not correctly rounded). col_map_g (empty: identity)
    maps file columns to output columns, -1 drops one. Returns a checksum of the touched values so the look-ahead loads cannot be removed
    by the compiler.
    """
    n_q = len(len_q)
    touched = 0.0
    for i in range(len(qptr_n) - 1):
        out_ng[i, :] = 0
        q_start, q_end = qptr_n[i], qptr_n[i + 1]
        scale = np.float32(1.0)
        if target_sum > 0:
            total = 0.0
            for q in range(q_start, q_end):
                a = data_addr_q[q]
                for j in range(len_q[q]):
                    total += data_m[a + j]
            scale = np.float32(target_sum / total) if total > 0 else np.float32(0.0)
        for q in range(q_start, q_end):
            p = q + AHEAD
            if p < n_q and len_q[p] > 0:
                touched += data_m[data_addr_q[p]] + indices_m[indices_addr_q[p]]
            a, b = data_addr_q[q], indices_addr_q[q]
            for j in range(len_q[q]):
                c = indices_m[b + j]
                if len(col_map_g):
                    c = col_map_g[c]
                    if c < 0:
                        continue
                v = np.float32(data_m[a + j])
                if target_sum > 0:
                    # log(1 + x) in float64 rounds to the same float32 as log1p for x >= 1e-4 and costs half as much (no SIMD log1p here)
                    x = np.float64(v * scale)
                    v = np.float32(math.log(1.0 + x)) if x >= 1e-4 else np.float32(math.log1p(x))
                out_ng[i, c] += v
    return touched
