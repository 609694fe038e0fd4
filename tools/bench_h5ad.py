"""Benchmark cell-set reading from a shuffled CSR `.h5ad`: our reader (cells.h5ad + cells.sets) against a naive AnnData backed loader.

Both read the same sets (same seed, `cells_per_set` perturbed + as many control cells, dense float32, `--transform`, default none) in the
same run, in turns of timed windows (median of `--repeats`) of repeated passes over the set list:
- naive: `adata = anndata.read_h5ad(path, backed="r")`, per set `adata[sorted_unique_idx].X.toarray()` (a typical research loader);
- ours (per set): `CellSetData.make_batch([set])` on the calling thread;
- ours (pipeline): `CellSetData.train_batches` with `--batch_size` sets per batch read ahead by `--read_threads` background threads, as training consumes it;
- bound: our reader on runs of consecutive rows (the same number of rows per set, read in file order): the rate when every access is sequential, the
  limit a shuffled file's random rows are measured against.

Usage: python -m tools.bench_h5ad [--path FILE.h5ad] [--n_cells 200000 --n_genes 2000] [--seconds 20]
"""

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator

from cli.help import ArgumentParser


def get_rate(read_one_pass: Callable[[], Iterator[int]], seconds: float) -> tuple[float, float]:
    """(sets per second of wall time, CPU ms per set over all threads) for a window of at least `seconds` of repeated passes.

    CPU time per set is the steadier figure on a shared machine, where other processes take cores away from the wall-clock rate.
    """
    n_sets = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        for n in read_one_pass():
            n_sets += n
            if time.perf_counter() - start >= seconds:
                return n_sets / (time.perf_counter() - start), (time.process_time() - cpu_start) / n_sets * 1e3


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m tools.bench_h5ad", description=__doc__)
    parser.add_argument(
        "--path", default=None, help="h5ad file to read; written with tools.simulate_h5ad when missing (default: a temp file, deleted afterwards)"
    )
    parser.add_argument("--n_cells", type=int, default=200_000)
    parser.add_argument("--n_genes", type=int, default=2_000)
    parser.add_argument("--n_perts", type=int, default=48)
    parser.add_argument("--n_contexts", type=int, default=2)
    parser.add_argument("--cells_per_set", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8, help="sets per batch of the pipeline measurement")
    parser.add_argument(
        "--read_threads", type=int, default=None, help="reader threads of the pipeline measurement (default: the training pipeline's, cells.sets.READ_THREADS)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per reader and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="windows per reader; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in_memory", action="store_true", help="also time --h5ad_in_memory")
    parser.add_argument(
        "--transform", default="none", choices=("none", "log1p"), help="log1p: normalize_total + log1p on read (raw counts), as training on counts does"
    )
    return parser


def get_args() -> argparse.Namespace:
    args = get_args_parser().parse_args()
    from cells import sets as cell_sets

    if args.read_threads is None:
        args.read_threads = cell_sets.READ_THREADS
    return args


def make_readers(args: argparse.Namespace, data, sets: list, adata) -> dict[str, Callable[[], Iterator[int]]]:
    """One pass over `sets` per reader: naive AnnData, ours one set at a time, ours as the training pipeline."""
    import numpy as np

    h5file = data.files[0]

    def naive_pass() -> Iterator[int]:
        for x in sets:
            idx = np.concatenate([x.rows_s, x.ctrl_s])
            unique_u, inverse = np.unique(idx, return_inverse=True)
            x_ug = adata[unique_u].X.toarray()
            both_ng = x_ug[inverse].astype(np.float32)
            assert both_ng.shape == (2 * args.cells_per_set, h5file.n_genes_out)
            yield 1

    def ours_set_pass() -> Iterator[int]:
        for x in sets:
            data.make_batch([x])
            yield 1

    def sequential_pass() -> Iterator[int]:
        rows_per_set = 2 * args.cells_per_set
        out_ng = np.empty((rows_per_set, h5file.n_genes_out), np.float32)
        for k in range(len(sets)):
            first = (k * rows_per_set) % max(1, h5file.n_cells - rows_per_set)
            h5file.read_rows_into(np.arange(first, first + rows_per_set), out_ng)
            yield 1

    def ours_pipeline_pass() -> Iterator[int]:
        for batch in data.train_batches(0):
            yield len(batch["pert"])

    return {
        "naive AnnData backed": naive_pass,
        "ours, one set at a time": ours_set_pass,
        f"ours, pipeline (batch {args.batch_size}, {args.read_threads} read threads)": ours_pipeline_pass,
        "bound: ours on consecutive rows, one set at a time": sequential_pass,
    }


def bench(args: argparse.Namespace, path: str) -> tuple[dict[str, list[tuple[float, float]]], dict]:
    """Time every reader on `path`; returns the rates per reader and what the report needs besides."""
    import anndata
    import numpy as np

    from cells import sets as cell_sets

    kwargs = dict(
        cells_per_set=args.cells_per_set, batch_size=args.batch_size, transform=args.transform, target_sum=1e4, seed=args.seed, read_threads=args.read_threads
    )
    start = time.perf_counter()
    data = cell_sets.make_cellset_data([path], **kwargs)
    setup_ours = time.perf_counter() - start
    sets = list(data.iter_train_sets(0))
    h5file = data.files[0]

    start = time.perf_counter()
    adata = anndata.read_h5ad(path, backed="r")
    setup_naive = time.perf_counter() - start

    # Same rows, same values: the comparison is of equal work (the naive reader does no transform: compare untransformed reads).
    plain = cell_sets.make_cellset_data([path], **{**kwargs, "transform": "none"})
    check = plain.make_batch([sets[0]])
    plain.close()
    unique_u, inverse = np.unique(sets[0].rows_s, return_inverse=True)
    assert np.array_equal(check["target"][0].numpy(), adata[unique_u].X.toarray()[inverse]), "ours and naive disagree"

    readers = make_readers(args, data, sets, adata)
    if args.in_memory:
        data_mem = cell_sets.make_cellset_data([path], in_memory=True, **kwargs)
        readers[f"ours, --h5ad_in_memory pipeline (batch {args.batch_size})"] = lambda: (len(b["pert"]) for b in data_mem.train_batches(0))
    # Readers take turns within each repeat, so a change in machine load hits all of them alike; medians over repeats.
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
    for _ in range(args.repeats):
        for name, read_one_pass in readers.items():
            rates[name].append(get_rate(read_one_pass, args.seconds))
    if args.in_memory:
        data_mem.close()
    data.close()
    adata.file.close()
    return rates, {"h5file": h5file, "n_sets": len(sets), "setup_ours": setup_ours, "setup_naive": setup_naive}


def print_report(args: argparse.Namespace, rates: dict[str, list[tuple[float, float]]], info: dict) -> None:
    import numpy as np

    h5file = info["h5file"]
    naive, naive_cpu = np.median(np.array(rates["naive AnnData backed"]), axis=0)
    print(
        f"file: {args.n_cells if args.path is None else h5file.n_cells} cells x {h5file.n_genes_file} genes, CSR, backend {h5file.backend}; "
        f"set = {args.cells_per_set} perturbed + {args.cells_per_set} control cells, dense float32, transform {args.transform}; "
        f"{info['n_sets']} sets per pass; median of {args.repeats} windows of {args.seconds:g} s"
    )
    print(f"setup: ours {info['setup_ours']:.2f} s, naive {info['setup_naive']:.2f} s")
    for name, values in rates.items():
        rate, cpu_ms = np.median(np.array(values), axis=0)
        windows = ", ".join(f"{v:.1f}" for v, _ in values)
        print(
            f"{name:55s} {rate:8.1f} sets/s {rate / naive:6.1f}x naive | {cpu_ms:7.2f} CPU ms/set {naive_cpu / cpu_ms:6.1f}x naive"
            f"   (sets/s per window: {windows})"
        )


def main() -> None:
    args = get_args()
    from cells import simulate as simulate_h5ad

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tmp_dpath = None
    path = args.path
    if path is None:
        tmp_dpath = tempfile.mkdtemp(prefix="bench_h5ad_")
        path = os.path.join(tmp_dpath, "sim.h5ad")
    if not os.path.exists(path):
        start = time.perf_counter()
        simulate_h5ad.simulate_h5ad(path, n_cells=args.n_cells, n_genes=args.n_genes, n_perts=args.n_perts, n_contexts=args.n_contexts, seed=args.seed)
        logging.info("simulated %s in %.1f s (%.0f MiB)", path, time.perf_counter() - start, os.path.getsize(path) / 2**20)

    try:
        rates, info = bench(args, path)
    finally:
        if tmp_dpath is not None:
            os.remove(path)
            os.rmdir(tmp_dpath)
    print_report(args, rates, info)


if __name__ == "__main__":
    main()
