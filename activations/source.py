"""The batches extraction reads: one split of this process, in a fixed order, padded and masked to full batches like eval, with a stable example index.

Images (TFDS): the eval split, a named eval set, or the train split read in order with the eval pp string (`Data.make_train_eval_set`). `_index` is the
example's position in the split's read order: this process's part starts at `EvalSet.first_index` and its examples follow in order, so it does not depend on
the batch size, and rows join back to the split (`split[i:i+1]` for single-file splits; the read order otherwise). `_id` (big_vision's int32 hash of the TFDS
record id) comes along when the pp string keeps it.

Cell sets: the eval split is the held-out groups' eval sets (index = the set's slot, the same on any number of processes); the train split is every training
group cut into sets in row order (set j of a group holds its cells j*s .. j*s+s-1, the last one wrapping around), with seeded control sets, dealt round-robin
to processes and padded. The set model's tokens are the control cells of a set, so each row carries the obs rows of those cells (`ctrl_rows`) and of the
perturbed cells it is compared with (`target_rows`), their file, perturbation and context.
"""

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch

from activations.config import SPLIT_HINT
from datasets import Data, EvalSet

Batch = dict[str, torch.Tensor]
IMAGE_KEYS = ("label", "_id")  # passed through to the shards when a batch has them
CELL_KEYS = ("pert", "cell_line", "file", "ctrl_rows", "target_rows")
KEY_EXTRACT_TRAIN = 101  # the seed stream of the train split's control sets (cells.groups' streams are 0-6)


@dataclasses.dataclass
class Source:
    """`n_batches` batches of `batch_size` rows for this process (`batches(start)`: from batch `start` on), over `n_examples` examples of all processes."""

    split: str
    n_batches: int
    n_examples: int
    batch_size: int
    keys: tuple[str, ...]  # besides _mask and _index, what each shard row records
    make_batches: Callable[[int], Iterator[Batch]]

    def batches(self, start: int = 0) -> Iterator[Batch]:
        return self.make_batches(start)

    def limit(self, n_batches: int) -> "Source":
        return dataclasses.replace(self, n_batches=min(self.n_batches, n_batches))


def make_source(data: Data, split: str, process_index: int, process_count: int, seed: int) -> Source:
    """The split `--extract_split` names, for process `process_index` of `process_count`."""
    if data.kind == "cellset":
        return _cell_source(data, split, process_index, process_count, seed)
    sets = data.get_eval_sets()
    if split == "train":
        assert data.make_train_eval_set is not None, "image data without an eval-style train set"
        eval_set = data.make_train_eval_set()
    elif split == "eval" and len(sets) == 1:
        eval_set = next(iter(sets.values()))
    elif split in sets and split:
        eval_set = sets[split]
    else:
        names = ", ".join(n for n in sets if n)
        hint = f"; this run has several eval sets ({names}): name one" if split == "eval" else ""
        raise ValueError(f"--extract_split {split!r} is not a split of this run{hint}; pass {SPLIT_HINT}" + (f" ({names})" if names and not hint else ""))
    return _image_source(eval_set, split)


def _image_source(eval_set: EvalSet, split: str) -> Source:
    first = next(eval_set.batches())
    b = int(first["_mask"].shape[0])
    keys = tuple(k for k in IMAGE_KEYS if isinstance(first.get(k), torch.Tensor))

    def batches(start: int) -> Iterator[Batch]:
        stream = itertools.islice(eval_set.batches(), start, None)
        for k, batch in enumerate(stream, start=start):
            out = {key: v for key, v in batch.items() if isinstance(v, torch.Tensor)}
            out["_index"] = eval_set.first_index + k * b + torch.arange(b, dtype=torch.int64)
            yield out

    return Source(split, eval_set.n_batches, eval_set.n_examples, b, keys, batches)


def _train_cell_sets(cells, seed: int) -> list:
    """Every training group cut into sets in row order, each with a control set seeded by (seed, group, set)."""
    from cells.groups import seeded_rng
    from cells.sets import CellSet, sample_rows

    s, out = cells.cells_per_set, []
    for gi, group in enumerate(cells.train_groups):
        n = len(group.rows)
        pool = cells.control_pools[group.file_idx, group.context]
        for j in range(-(-n // s)):
            rows_s = group.rows[np.arange(j * s, (j + 1) * s) % n]
            ctrl_s = sample_rows(seeded_rng(seed, KEY_EXTRACT_TRAIN, gi, j), pool, s)
            out.append(CellSet(group.file_idx, group.pert, group.context, rows_s, ctrl_s))
    return out


def _cell_source(data: Data, split: str, process_index: int, process_count: int, seed: int) -> Source:
    cells = data.cells
    if split not in ("eval", "train"):
        raise ValueError(f"--extract_split {split!r}: cell sets have the splits eval (held-out groups) and train")
    b = cells.batch_size
    if split == "eval":
        n_all, n_batches, sets = cells.n_eval_sets, cells.eval_steps, cells.eval_sets()  # slot p, p + n, ... of the held-out sets, padded
    else:
        every = _train_cell_sets(cells, seed)
        n_all, n_batches = len(every), -(-len(every) // (b * process_count))
        sets = [
            every[i] if i < n_all else dataclasses.replace(every[0], mask=False) for i in range(process_index, n_batches * b * process_count, process_count)
        ]
    slots = list(range(process_index, n_batches * b * process_count, process_count))
    assert len(sets) == len(slots) == n_batches * b, (len(sets), len(slots), n_batches, b)

    def batches(start: int) -> Iterator[Batch]:
        for k in range(start, n_batches):
            chunk = sorted(zip(slots[k * b : (k + 1) * b], sets[k * b : (k + 1) * b], strict=True), key=lambda p: p[1].file_idx)  # make_batch's order
            batch = cells.make_batch([x for _, x in chunk])
            batch["_index"] = torch.tensor([i if i < n_all else -1 for i, _ in chunk], dtype=torch.int64)
            batch["file"] = torch.tensor([x.file_idx for _, x in chunk], dtype=torch.int64)
            batch["ctrl_rows"] = torch.from_numpy(np.stack([x.ctrl_s for _, x in chunk]).astype(np.int64))
            batch["target_rows"] = torch.from_numpy(np.stack([x.rows_s for _, x in chunk]).astype(np.int64))
            yield batch

    return Source(split, n_batches, n_all, b, CELL_KEYS, batches)
