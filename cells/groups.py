"""(file, context, perturbation) groups of cells, the control pool of each (file, context), and which perturbations are held out for eval.

Shape letters: n cells of a file, v valid cells (with both labels).
"""

import dataclasses
import difflib
import os

import numpy as np

from cells import h5ad

# Second words of the seed keys, so the streams for different purposes never coincide.
KEY_TRAIN, KEY_CTRL, KEY_EVAL, KEY_SPLIT, KEY_BASELINE, KEY_SCORE, KEY_EXPORT = 0, 1, 2, 3, 4, 5, 6


@dataclasses.dataclass(frozen=True)
class Group:
    file_idx: int
    context: int  # index into context_names
    pert: int  # index into pert_names
    rows: np.ndarray  # sorted rows of the file


def seeded_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def read_eval_perts(fpath: str, pert_names: list[str], control_label: str) -> list[str]:
    if not os.path.isfile(fpath):
        raise FileNotFoundError(f"--eval_perts file not found: {fpath}")
    with open(fpath) as fd:
        labels = sorted({line.strip() for line in fd if line.strip()})
    if not labels:
        raise ValueError(f"--eval_perts file {fpath} lists no perturbation")
    for label in labels:
        if label == control_label:
            raise ValueError(f"--eval_perts file {fpath} lists the control label {control_label!r}; controls are never held out")
        if label not in pert_names:
            raise ValueError(
                f"--eval_perts file {fpath}: perturbation {label!r} has no cells in the h5ad files; close matches: "
                f"{difflib.get_close_matches(label, pert_names, n=3, cutoff=0.5)}"
            )
    return labels


def label_spaces(files: list[h5ad.H5adFile], control_label: str) -> tuple[list[str], list[str]]:
    """Global label spaces: perturbations with cells in any file (control first), contexts sorted."""
    counts_per_file = [np.bincount(f.pert_codes_n[f.pert_codes_n >= 0], minlength=len(f.pert_categories)) for f in files]
    labels = {f.pert_categories[i] for f, c in zip(files, counts_per_file, strict=True) for i in np.flatnonzero(c)}
    pert_names = [control_label] + sorted(labels - {control_label})
    contexts = {f.context_categories[i] for f in files for i in np.unique(f.context_codes_n[f.context_codes_n >= 0])}
    return pert_names, sorted(contexts)


def make_groups(
    files: list[h5ad.H5adFile], pert_names: list[str], context_names: list[str], control_label: str
) -> tuple[list[Group], dict[tuple[int, int], np.ndarray], int]:
    """The (file, context, perturbation) groups of perturbed cells, the control pool of each (file, context), and the number of cells without a label."""
    pert_index = {p: i for i, p in enumerate(pert_names)}  # dicts: genome-wide screens have ~10^4 labels
    context_index = {c: i for i, c in enumerate(context_names)}
    groups: list[Group] = []
    control_pools: dict[tuple[int, int], np.ndarray] = {}
    n_missing = 0
    for fi, f in enumerate(files):
        pert_map = np.array([pert_index.get(c, -1) for c in f.pert_categories] + [-1], np.int64)
        context_map = np.array([context_index.get(c, -1) for c in f.context_categories] + [-1], np.int64)
        pert_n, context_n = pert_map[f.pert_codes_n], context_map[f.context_codes_n]  # code -1 (missing) hits the trailing -1
        valid_n = (pert_n >= 0) & (context_n >= 0)
        n_missing += int((~valid_n).sum())
        rows_v = np.flatnonzero(valid_n)
        key_v = context_n[rows_v] * len(pert_names) + pert_n[rows_v]
        order_v = np.argsort(key_v, kind="stable")  # stable: rows stay sorted within a group
        rows_v, key_v = rows_v[order_v], key_v[order_v]
        bounds = np.flatnonzero(np.diff(key_v)) + 1
        for rows in np.split(rows_v, bounds):
            if len(rows) == 0:
                continue
            context, pert = divmod(int(context_n[rows[0]] * len(pert_names) + pert_n[rows[0]]), len(pert_names))
            if pert == 0:
                control_pools[fi, context] = rows
            else:
                groups.append(Group(fi, context, pert, rows))
    for g in groups:
        if (g.file_idx, g.context) not in control_pools:
            raise ValueError(
                f"{files[g.file_idx].fpath}: context {context_names[g.context]!r} has perturbed cells but no {control_label!r} cells to match them with"
            )
    return groups, control_pools, n_missing


def check_eval_contexts(eval_contexts: list[str], context_names: list[str]) -> list[str]:
    for name in eval_contexts:
        if name not in context_names:
            raise ValueError(
                f"--eval_contexts: context {name!r} has no cells in the h5ad files; contexts: {context_names}, close matches: "
                f"{difflib.get_close_matches(name, context_names, n=3, cutoff=0.5)}"
            )
    return sorted(set(eval_contexts))


def draw_eval_perts(
    eval_frac: float, groups: list[Group], pert_names: list[str], context_names: list[str], eval_contexts: list[str] | None, seed: int
) -> list[str]:
    """A seeded `eval_frac` of the perturbations; with `eval_contexts`, only among those with cells there and in another context."""
    candidates = pert_names[1:]
    if eval_contexts is not None:
        eval_codes = {context_names.index(c) for c in eval_contexts}
        in_eval = {g.pert for g in groups if g.context in eval_codes}
        elsewhere = {g.pert for g in groups if g.context not in eval_codes}
        candidates = [pert_names[p] for p in sorted(in_eval & elsewhere)]
        if len(candidates) < 2:
            raise ValueError(
                f"--eval_contexts {eval_contexts}: {len(candidates)} perturbations have cells both there and in another context; "
                "need at least 2 to hold some out and train on the rest"
            )
    n_eval = max(1, round(eval_frac * len(candidates)))
    if n_eval >= len(candidates):
        raise ValueError(f"--eval_frac {eval_frac} holds out all {len(candidates)} perturbations; nothing left to train on")
    return sorted(seeded_rng(seed, KEY_SPLIT).choice(candidates, n_eval, replace=False).tolist())
