"""Gene identities: Ensembl ids (version stripped) or symbols, `--gene_vocab` files, and the map of a vocab onto one file's genes."""

import collections
import dataclasses
import os
import re

import numpy as np

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*[GT]\d{6,}(\.\d+)?$")


def strip_version(gene_id: str) -> str:
    """`ENSG00000000001.5` -> `ENSG00000000001`; anything that is not an Ensembl id is returned unchanged."""
    return gene_id.split(".", 1)[0] if ENSEMBL_RE.match(gene_id) else gene_id


@dataclasses.dataclass(frozen=True)
class GeneMap:
    """Where each vocab gene sits in one file: `vocab_to_file_g[i]` is a file gene index, or -1 (missing: zeros)."""

    vocab_to_file_g: np.ndarray
    n_matched: int
    n_ambiguous: int
    n_missing: int


def read_gene_vocab(fpath: str) -> list[str]:
    """One gene per line (Ensembl id, version optional, or symbol); blank lines skipped; duplicates are an error."""
    if not os.path.isfile(fpath):
        raise FileNotFoundError(f"--gene_vocab file not found: {fpath}")
    with open(fpath) as fd:
        vocab = [strip_version(line.strip()) for line in fd if line.strip()]
    if not vocab:
        raise ValueError(f"--gene_vocab file {fpath} lists no genes")
    dupes = [g for g, c in collections.Counter(vocab).items() if c > 1]
    if dupes:
        raise ValueError(f"--gene_vocab file {fpath} lists {len(dupes)} genes more than once (after stripping versions), e.g. {dupes[:5]}")
    return vocab


def make_gene_map(vocab: list[str], symbols: list[str], gene_ids: list[str] | None, *, vocab_name: str, h5ad_fpath: str) -> GeneMap:
    """Match vocab entries to a file's genes: by Ensembl id first, by symbol only when the symbol is unique in the file."""
    id_counts = collections.Counter(gene_ids or [])
    id_pos = {g: i for i, g in enumerate(gene_ids or [])}
    symbol_counts = collections.Counter(symbols)
    symbol_pos = {s: i for i, s in enumerate(symbols)}
    vocab_to_file_g = np.full(len(vocab), -1, np.int64)
    n_ambiguous = 0
    for v, name in enumerate(vocab):
        if id_counts.get(name, 0) == 1:
            vocab_to_file_g[v] = id_pos[name]
        elif symbol_counts.get(name, 0) == 1:
            vocab_to_file_g[v] = symbol_pos[name]
        elif id_counts.get(name, 0) > 1 or symbol_counts.get(name, 0) > 1:
            n_ambiguous += 1
    n_matched = int((vocab_to_file_g >= 0).sum())
    if n_matched == 0:
        raise ValueError(
            f"gene vocab {vocab_name} shares no gene with {h5ad_fpath}: vocab starts with {vocab[:5]}, the file's symbols start with {symbols[:5]} and its "
            f"Ensembl ids with {(gene_ids or [])[:5]}"
        )
    matched = vocab_to_file_g[vocab_to_file_g >= 0]
    if len(np.unique(matched)) != len(matched):
        raise ValueError(f"gene vocab {vocab_name}: several vocab entries map to the same gene of {h5ad_fpath} (an Ensembl id and its symbol both listed?)")
    return GeneMap(vocab_to_file_g, n_matched, n_ambiguous, len(vocab) - n_matched - n_ambiguous)
