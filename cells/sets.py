"""Cell-set batches from `.h5ad` files: (context, perturbation) groups, matched control sets, held-out perturbations, per-process splits, background prefetch.

One example is a set of `cells_per_set` perturbed cells of one (file, context, perturbation) group plus a control set of the same size drawn from the controls
of the same file and context (cell-load's `random` mapping: controls are never matched across files). Batches follow the cell-set batch contract of DESIGN.md:
`ctrl` and `target` float32 [b, s, g], `pert` and `cell_line` int64 [b], `_mask` bool [b].

Training: each group is shuffled and cut into sets every epoch (the last set of a group overlaps the one before it so no set repeats a cell; a group smaller
than a set is sampled with replacement), the global list is shuffled with a generator keyed by (seed, epoch), and process i of n takes a disjoint slice. Eval:
one fixed set per held-out group, dealt round-robin to processes and padded with `_mask=False` rows to whole batches, so every held-out group counts exactly
once and every batch has one shape.

Shape letters: b sets per batch, s cells per set, g genes, t sets in a list.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from cells import buffers, genes, h5ad
from cells.groups import (
    KEY_BASELINE,
    KEY_CTRL,
    KEY_EVAL,
    KEY_SCORE,
    KEY_TRAIN,
    Group,
    check_eval_contexts,
    draw_eval_perts,
    label_spaces,
    make_groups,
    read_eval_perts,
    seeded_rng,
)
from utils import settings

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # bounded: a batch of 16 sets x 2 x 512 cells x 18k genes is ~1.2 GB
# the compiled row reader (cells/kernels.py) releases the GIL, so two threads read about twice as many sets per second as one at the same
# CPU time per set (tools/bench_h5ad.py --read_threads 1 vs 2: 540 vs 847 sets/s on 2 cores); more only helps with more idle cores
READ_THREADS = 2


@dataclasses.dataclass(frozen=True)
class CellSet:
    """Row indices of one example: perturbed cells `rows_s` and matched controls `ctrl_s`, both in file `file_idx`."""

    file_idx: int
    pert: int
    context: int
    rows_s: np.ndarray
    ctrl_s: np.ndarray
    mask: bool = True


def sample_rows(rng: np.random.Generator, pool: np.ndarray, size: int) -> np.ndarray:
    """`size` rows of the pool: without replacement when it is big enough, with replacement otherwise."""
    return pool[rng.choice(len(pool), size, replace=len(pool) < size)]


def _prefetch(
    chunks: Iterator[list[CellSet]], read: Callable[[list[CellSet]], dict[str, torch.Tensor]], depth: int, threads: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Read batches on a small thread pool, up to `depth` ahead, and yield them in order, so the training step never waits on file reads.

    numpy's gathers, scipy's densify and HDF5 reads release the GIL, so the threads overlap reads with each other and with the device step; a read's exception
    surfaces in the consumer, and closing the iterator cancels what is queued.
    """
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cellset-read")
    try:
        for chunk in chunks:
            pending.append(executor.submit(read, chunk))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class CellSetData:
    """Cell-set batches for this process; build it with `make_cellset_data`."""

    def __init__(
        self,
        files: list[h5ad.H5adFile],
        *,
        groups: list[Group],
        control_pools: dict[tuple[int, int], np.ndarray],
        pert_names: list[str],
        context_names: list[str],
        gene_names: list[str],
        eval_pert_names: list[str],
        cells_per_set: int,
        eval_context_names: list[str] | None = None,
        batch_size: int,
        seed: int,
        process_index: int,
        process_count: int,
        prefetch: int = PREFETCH_BATCHES,
        read_threads: int = READ_THREADS,
    ) -> None:
        self.files = files
        self.pert_names, self.context_names, self.gene_names = pert_names, context_names, gene_names
        self.n_perts, self.n_contexts, self.n_genes = len(pert_names), len(context_names), len(gene_names)
        self.control_index = 0
        self.eval_pert_names = eval_pert_names
        self.eval_context_names = eval_context_names  # None: held out in every context
        self.cells_per_set, self.batch_size, self.seed = cells_per_set, batch_size, seed
        self.process_index, self.process_count, self.prefetch, self.read_threads = process_index, process_count, prefetch, read_threads
        self.control_pools = control_pools
        eval_codes = {pert_names.index(p) for p in eval_pert_names}
        eval_contexts = set(range(len(context_names))) if eval_context_names is None else {context_names.index(c) for c in eval_context_names}
        is_eval = [g.pert in eval_codes and g.context in eval_contexts for g in groups]
        self.train_groups = [g for g, e in zip(groups, is_eval, strict=True) if not e]
        self.eval_groups = [g for g, e in zip(groups, is_eval, strict=True) if e]
        s = cells_per_set
        self.n_train_sets = sum(-(-len(g.rows) // s) for g in self.train_groups)
        self.sets_per_process = self.n_train_sets // process_count
        self.steps_per_epoch = self.sets_per_process // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.n_train_sets} training sets of {s} cells cannot fill one batch of {batch_size} sets on each of {process_count} processes; "
                "lower --batch_size or --cells_per_set"
            )
        self.n_small_train_groups = sum(len(g.rows) < s for g in self.train_groups)
        self.n_small_eval_groups = sum(len(g.rows) < s for g in self.eval_groups)
        self.n_small_control_pools = sum(len(p) < s for p in control_pools.values())
        self.n_eval_sets = len(self.eval_groups)
        per_round = batch_size * process_count
        self.eval_steps = -(-self.n_eval_sets // per_round)  # batches per process, equal on all processes
        self._eval_sets = self._make_eval_sets()
        self._buffers = buffers.BufferPool(prefetch + read_threads + 2)  # read ahead, being read, held by the step, just released

    def iter_train_sets(self, epoch: int) -> Iterator[CellSet]:
        """This process's `steps_per_epoch * batch_size` training sets of `epoch`, in order."""
        s = self.cells_per_set
        rng = seeded_rng(self.seed, KEY_TRAIN, epoch)
        group_t: list[np.ndarray] = []
        rows_parts: list[np.ndarray] = []
        for gi, group in enumerate(self.train_groups):
            n = len(group.rows)
            if n < s:
                rows_ts = rng.choice(group.rows, s, replace=True)[None, :]
            else:
                perm = rng.permutation(group.rows)
                # The last set ends at the group's end and overlaps the previous one instead of repeating cells within a set.
                starts_t = np.minimum(np.arange(-(-n // s)) * s, n - s)
                rows_ts = perm[starts_t[:, None] + np.arange(s)]
            rows_parts.append(rows_ts)
            group_t.append(np.full(len(rows_ts), gi))
        all_rows_ts = np.concatenate(rows_parts)
        all_group_t = np.concatenate(group_t)
        assert len(all_rows_ts) == self.n_train_sets, (len(all_rows_ts), self.n_train_sets)
        order_t = rng.permutation(self.n_train_sets)
        first = self.process_index * self.sets_per_process
        for set_id in order_t[first : first + self.steps_per_epoch * self.batch_size]:
            group = self.train_groups[all_group_t[set_id]]
            # Controls keyed by (seed, epoch, set id): a set's content does not depend on the number of processes.
            ctrl_s = sample_rows(seeded_rng(self.seed, KEY_CTRL, epoch, set_id), self.control_pools[group.file_idx, group.context], s)
            yield CellSet(group.file_idx, group.pert, group.context, all_rows_ts[set_id], ctrl_s)

    def _make_eval_sets(self) -> list[CellSet]:
        sets = []
        for gi, group in enumerate(self.eval_groups):
            rng = seeded_rng(self.seed, KEY_EVAL, gi)
            rows_s = sample_rows(rng, group.rows, self.cells_per_set)
            ctrl_s = sample_rows(rng, self.control_pools[group.file_idx, group.context], self.cells_per_set)
            sets.append(CellSet(group.file_idx, group.pert, group.context, rows_s, ctrl_s))
        return sets

    def eval_sets(self) -> list[CellSet]:
        """This process's eval sets: round-robin over the held-out groups, padded with masked copies of the first set to `eval_steps` full batches."""
        n_slots = self.eval_steps * self.batch_size * self.process_count
        out = []
        for slot in range(self.process_index, n_slots, self.process_count):
            if slot < self.n_eval_sets:
                out.append(self._eval_sets[slot])
            else:
                out.append(dataclasses.replace(self._eval_sets[0], mask=False))
        return out

    def target_gene_names(self) -> list[str]:
        """Each perturbation's target gene in the column vocabulary (`gene_names`), or its own label when that is not a column: a label
        that is a symbol finds its gene through a file's symbol -> Ensembl id table when the columns are Ensembl ids (`--gene_vocab`)."""
        columns = set(self.gene_names)
        out = []
        for label in self.pert_names:
            name = label
            if label not in columns:
                for f in self.files:
                    if f.gene_ids is not None and f.gene_symbols.count(label) == 1 and f.gene_ids[f.gene_symbols.index(label)] in columns:
                        name = f.gene_ids[f.gene_symbols.index(label)]
                        break
            out.append(name)
        return out

    def describe_vocabulary(self) -> dict:
        """The names a set model's inputs and outputs are indexed by (saved in its checkpoints): genes in column order, perturbations
        (the control first), contexts, the held-out perturbations, the control label, the transform of each file and the set size."""
        return {
            "gene_names": list(self.gene_names),
            "pert_names": list(self.pert_names),
            "context_names": list(self.context_names),
            "eval_pert_names": list(self.eval_pert_names),
            "eval_context_names": None if self.eval_context_names is None else list(self.eval_context_names),
            "control_label": self.pert_names[self.control_index],
            "transforms": [f.transform for f in self.files],
            "target_sums": [f.target_sum for f in self.files],
            "cells_per_set": self.cells_per_set,
        }

    def full_eval_sets(self) -> list[tuple[Group, list[CellSet]]]:
        """Every held-out group at its real size, for full-data scoring: set k holds the group's rows k*s .. k*s + s - 1 (the last set
        wraps around to the first rows; callers keep the first n rows of the concatenation), each with its own seeded control set."""
        s, out = self.cells_per_set, []
        for gi, group in enumerate(self.eval_groups):
            n = len(group.rows)
            pool = self.control_pools[group.file_idx, group.context]
            sets = []
            for k in range(-(-n // s)):
                rows_s = group.rows[np.arange(k * s, (k + 1) * s) % n]
                ctrl_s = sample_rows(seeded_rng(self.seed, KEY_SCORE, gi, k), pool, s)
                sets.append(CellSet(group.file_idx, group.pert, group.context, rows_s, ctrl_s))
            out.append((group, sets))
        return out

    def read_control_cells(self, context: int) -> np.ndarray:
        """Every control cell of `context` (all files), float32 [n, g], transformed like the batches."""
        parts = []
        for (fi, c), rows in sorted(self.control_pools.items()):
            if c == context:
                out_ng = np.empty((len(rows), self.n_genes), np.float32)
                self.files[fi].read_rows_into(rows.astype(np.int64), out_ng)
                parts.append(out_ng)
        return np.concatenate(parts)

    def make_batch(self, sets: list[CellSet]) -> dict[str, torch.Tensor]:
        """Read a list of sets into one contract batch, straight into the output buffer; with several files,
        sets are grouped by file (stable) so each file fills contiguous rows."""
        sets = sorted(sets, key=lambda x: x.file_idx)
        b, s, g = len(sets), self.cells_per_set, self.n_genes
        buf_2bsg = self._buffers.get((2, b, s, g))  # [0] controls, [1] perturbed cells; every row is written by the reader
        file_b = np.array([x.file_idx for x in sets])
        if len(set(file_b.tolist())) == 1:
            rows_n = np.concatenate([x.ctrl_s for x in sets] + [x.rows_s for x in sets])
            self.files[sets[0].file_idx].read_rows_into(rows_n.astype(np.int64), buf_2bsg.reshape(2 * b * s, g))
        else:
            for f in np.unique(file_b):
                sel_b = np.flatnonzero(file_b == f)
                first, last = int(sel_b[0]), int(sel_b[-1]) + 1
                for half, attr in ((0, "ctrl_s"), (1, "rows_s")):
                    rows_n = np.concatenate([getattr(sets[i], attr) for i in sel_b]).astype(np.int64)
                    self.files[f].read_rows_into(rows_n, buf_2bsg[half, first:last].reshape(-1, g))
        return {
            "ctrl": torch.from_numpy(buf_2bsg[0]),
            "target": torch.from_numpy(buf_2bsg[1]),
            "pert": torch.tensor([x.pert for x in sets], dtype=torch.int64),
            "cell_line": torch.tensor([x.context for x in sets], dtype=torch.int64),
            "_mask": torch.tensor([x.mask for x in sets], dtype=torch.bool),
        }

    def _chunks(self, sets: Iterator[CellSet]) -> Iterator[list[CellSet]]:
        chunk: list[CellSet] = []
        for x in sets:
            chunk.append(x)
            if len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        assert not chunk, f"{len(chunk)} sets left over: set lists are whole batches by construction"

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches `start_step` to `steps_per_epoch` of this process for `epoch`, read ahead on background threads;
        skipped batches are never read (exact resume)."""
        assert 0 <= start_step <= self.steps_per_epoch, (start_step, self.steps_per_epoch)
        sets = itertools.islice(self.iter_train_sets(epoch), start_step * self.batch_size, None)
        return _prefetch(self._chunks(sets), self.make_batch, self.prefetch, self.read_threads)

    def get_train_pert_mean(self, *, max_groups: int = 256, cells_per_group: int = 64) -> np.ndarray:
        """Mean over training perturbations of their pseudobulks, float64 [g]: cell-eval's mean-of-perturbations baseline.

        Only the training groups of the eval contexts count (all contexts when perturbations are held out everywhere), so the baseline knows the held-out
        context as well as the model does. Estimated from up to `max_groups` groups (seeded) of up to `cells_per_group` cells each: a few thousand rows, cheap
        even for genome-wide screens.
        """
        eval_contexts = {g.context for g in self.eval_groups}
        pool = [g for g in self.train_groups if not eval_contexts or g.context in eval_contexts]
        assert pool, "no training perturbation in the eval contexts"
        rng = seeded_rng(self.seed, KEY_BASELINE)
        picked = [pool[i] for i in sorted(rng.choice(len(pool), min(max_groups, len(pool)), replace=False))]
        bulk_qg = np.empty((len(picked), self.n_genes), np.float64)
        for q, group in enumerate(picked):
            rows = np.sort(rng.choice(group.rows, min(cells_per_group, len(group.rows)), replace=False))
            bulk_qg[q] = self.files[group.file_idx].read_rows(rows).mean(axis=0, dtype=np.float64)
        return bulk_qg.mean(axis=0)

    def eval_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """`eval_steps` batches of this process (the same on every call); padding rows have `_mask` False."""
        return _prefetch(self._chunks(iter(self.eval_sets())), self.make_batch, self.prefetch, self.read_threads)

    def close(self) -> None:
        for f in self.files:
            f.close()


def _align_genes(files: list[h5ad.H5adFile], gene_vocab: str | None, log_info: Callable[..., None]) -> list[str]:
    """Map every file onto one gene order (the vocab's, or the first file's) and return that order's names."""
    if gene_vocab is not None:
        vocab = genes.read_gene_vocab(gene_vocab)
        for f in files:
            gene_map = genes.make_gene_map(vocab, f.gene_symbols, f.gene_ids, vocab_name=gene_vocab, h5ad_fpath=f.fpath)
            log_info(
                "%s: gene vocab %s: %d matched, %d ambiguous symbols, %d missing (zeros) of %d vocab genes",
                f.fpath,
                gene_vocab,
                gene_map.n_matched,
                gene_map.n_ambiguous,
                gene_map.n_missing,
                len(vocab),
            )
            f.set_gene_map(gene_map)
        return vocab
    first = files[0]
    for f in files[1:]:
        use_ids = first.gene_ids is not None and f.gene_ids is not None
        keys, other = (first.gene_ids, f.gene_ids) if use_ids else (first.gene_symbols, f.gene_symbols)
        if keys == other:
            continue
        if sorted(keys) != sorted(other) or len(set(keys)) != len(keys):
            only_first, only_other = sorted(set(keys) - set(other)), sorted(set(other) - set(keys))
            raise ValueError(
                f"{f.fpath} and {first.fpath} have different genes ({len(only_first)} only in the first, e.g. {only_first[:3]}; "
                f"{len(only_other)} only in {f.fpath}, e.g. {only_other[:3]}); pass --gene_vocab to map all files onto one gene list"
            )
        f.set_gene_map(genes.make_gene_map(keys, f.gene_symbols, f.gene_ids, vocab_name=first.fpath, h5ad_fpath=f.fpath))
    return list(first.gene_symbols)


DEFAULT_EVAL_FRAC = 0.2  # without --eval_perts or --eval_frac, this seeded fraction of the perturbations is held out for the eval metrics


def check_eval_split(eval_perts: str | None, eval_frac: float) -> None:
    """How the held-out perturbations are chosen: a file or a seeded fraction, never both."""
    if not 0.0 <= eval_frac < 1.0:
        raise ValueError(f"--eval_frac must be in [0, 1), got {eval_frac}")
    if eval_perts is not None and eval_frac > 0:
        raise ValueError("pass either --eval_perts or --eval_frac, not both")


@dataclasses.dataclass(frozen=True)
class CellSetConfig:
    """The `h5ad / cell sets` flags: which files, which obs columns, set size, transform, gene order and the held-out perturbations."""

    h5ad_path: list[str] | None = None
    pert_col: str = "target_gene"
    context_col: str = "cell_line"
    control_label: str = "non-targeting"
    cells_per_set: int = settings.setting(64, range=settings.AT_LEAST_ONE)
    h5ad_transform: str = settings.setting("auto", choices=h5ad.TRANSFORMS)
    gene_vocab: str | None = None
    h5ad_in_memory: bool = False
    h5ad_matrix: str = "X"
    h5ad_target_sum: str = h5ad.DEFAULT_TARGET_SUM  # "median" or a number
    eval_perts: str | None = None
    eval_frac: float = 0.0
    eval_contexts: list[str] | None = None

    def __post_init__(self):
        settings.check_fields(self)
        h5ad.check_matrix_name(self.h5ad_matrix)
        h5ad.parse_target_sum(self.h5ad_target_sum)
        check_eval_split(self.eval_perts, self.eval_frac)

    def get_eval_frac(self, seed: int) -> float:
        """`--eval_frac`, or the default fraction when no held-out perturbations are named (logged: it decides what the metrics cover)."""
        if self.eval_perts is not None or self.eval_frac:
            return self.eval_frac
        log.info(
            "no --eval_perts or --eval_frac: holding out a seeded --eval_frac %g of the perturbations (--seed %d) for the eval metrics", DEFAULT_EVAL_FRAC, seed
        )
        return DEFAULT_EVAL_FRAC


def make_cellset_data(
    h5ad_paths: list[str],
    *,
    pert_col: str = "target_gene",
    context_col: str = "cell_line",
    control_label: str = "non-targeting",
    cells_per_set: int = 64,
    batch_size: int,
    transform: str = "auto",
    gene_vocab: str | None = None,
    in_memory: bool = False,
    eval_perts: str | None = None,
    eval_frac: float = 0.0,
    eval_contexts: list[str] | None = None,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = PREFETCH_BATCHES,
    read_threads: int = READ_THREADS,
    matrix: str = "X",
    target_sum: str | float = h5ad.DEFAULT_TARGET_SUM,
) -> CellSetData:
    """Open and validate the files, build groups and control pools, hold out perturbations, and return this process's `CellSetData`.

    Held-out perturbations (`eval_perts` file or a seeded `eval_frac` of them) are held out in every context, or only in `eval_contexts` when given: then they
    stay in training in the other contexts (context transfer, as predicting a known perturbation in a new cell line), and `eval_frac` draws only among
    perturbations with cells in an eval context and in another one.
    """
    if not h5ad_paths:
        raise ValueError("--h5ad_path needs at least one .h5ad file")
    assert 0 <= process_index < process_count, (process_index, process_count)
    if cells_per_set < 1 or batch_size < 1:
        raise ValueError(f"--cells_per_set ({cells_per_set}) and --batch_size ({batch_size}) must be >= 1")
    check_eval_split(eval_perts, eval_frac)
    is_main = process_index == 0
    log_info = log.info if is_main else log.debug
    read = dict(transform=transform, in_memory=in_memory, log_info=is_main, matrix=matrix, target_sum=target_sum)
    files = [h5ad.H5adFile(p, pert_col=pert_col, context_col=context_col, control_label=control_label, **read) for p in h5ad_paths]
    gene_names = _align_genes(files, gene_vocab, log_info)

    pert_names, context_names = label_spaces(files, control_label)
    groups, control_pools, n_missing = make_groups(files, pert_names, context_names, control_label)
    if n_missing:
        log_info("skipped %d cells with a missing %s or %s", n_missing, pert_col, context_col)
    if eval_contexts is not None:
        eval_contexts = check_eval_contexts(eval_contexts, context_names)
    if eval_perts is not None:
        eval_pert_names = read_eval_perts(eval_perts, pert_names, control_label)
    else:
        eval_pert_names = draw_eval_perts(eval_frac, groups, pert_names, context_names, eval_contexts, seed) if eval_frac > 0 else []
    names = dict(pert_names=pert_names, context_names=context_names, gene_names=gene_names, eval_pert_names=eval_pert_names, eval_context_names=eval_contexts)
    sizes = dict(cells_per_set=cells_per_set, batch_size=batch_size, seed=seed, prefetch=prefetch, read_threads=read_threads)
    data = CellSetData(files, groups=groups, control_pools=control_pools, process_index=process_index, process_count=process_count, **names, **sizes)
    _log_summary(data, log_info)
    return data


def _log_summary(data: CellSetData, log_info: Callable[..., None]) -> None:
    n_by_ctx = collections.Counter(data.context_names[g.context] for g in data.train_groups)
    eval_contexts = data.eval_context_names
    log_info(
        "cell sets: %d files, %d contexts, %d perturbations (%d held out in %s), %d train groups %s, %d eval groups, %d genes",
        len(data.files),
        data.n_contexts,
        data.n_perts - 1,
        len(data.eval_pert_names),
        "every context" if eval_contexts is None else f"contexts {eval_contexts} only",
        len(data.train_groups),
        dict(n_by_ctx),
        len(data.eval_groups),
        data.n_genes,
    )
    log_info(
        "cell sets: %d train sets of %d cells per epoch, %d steps per epoch per process, %d eval batches per process",
        data.n_train_sets,
        data.cells_per_set,
        data.steps_per_epoch,
        data.eval_steps,
    )
    if data.n_small_train_groups or data.n_small_eval_groups or data.n_small_control_pools:
        log_info(
            "cell sets: groups smaller than a set are sampled with replacement: %d of %d train groups, %d of %d eval groups, %d of %d control pools",
            data.n_small_train_groups,
            len(data.train_groups),
            data.n_small_eval_groups,
            len(data.eval_groups),
            data.n_small_control_pools,
            len(data.control_pools),
        )
