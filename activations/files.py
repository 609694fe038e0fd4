"""The files of an extraction, local or gs:// (through `utils.fs`):

    DIR/meta.json                      run level, written once by process 0: model, checkpoint and step, layers (per-row shape, dtype), token selection and
                                       kept positions, split, example count, process count, rows per shard, versions
    DIR/p00000/manifest.json           per process, replaced atomically after every shard that is durable: the shards, their rows and index range, where the
                                       pass resumes (`next_batch`, `next_row`: kept rows of that batch already written) and whether the process is done
    DIR/p00000/shard-000000.safetensors every extracted layer `[r, ...]` plus `index` `[r]` and the row's labels (images: `label`; cell sets: `pert`,
                                       `context`, `file`, `ctrl_rows` and `target_rows` `[r, s]`), `__metadata__` naming the layers, process and split

A shard is written under a temporary name, fsynced and renamed (`utils.fs.write_atomic`), and only then listed in the manifest, so a crash leaves at most an
unlisted file, which a resumed run deletes. The bytes of a shard depend only on its rows (no times, no paths), so a resumed run ends with the same files as
an uninterrupted one.
"""

import dataclasses
import json
import logging
import re

import torch

from utils import fs

log = logging.getLogger(__name__)

META_FNAME = "meta.json"
MANIFEST_FNAME = "manifest.json"
SHARD_RE = re.compile(r"^shard-(\d{6})\.safetensors$")
FORMAT = 1
# meta.json entries that must agree for a run to continue another one's files
RESUME_KEYS = ("format", "model", "checkpoint", "layers", "tokens", "split", "process_count", "rows_per_shard", "max_examples", "batch_size")


def get_process_dpath(dpath: str, rank: int) -> str:
    return fs.join(dpath, f"p{rank:05d}")


def get_shard_fname(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


@dataclasses.dataclass
class Manifest:
    """One process's progress: its durable shards and the resume point."""

    process: int
    shards: list[dict] = dataclasses.field(default_factory=list)
    next_batch: int = 0
    next_row: int = 0  # kept rows of batch `next_batch` that are in the shards already
    complete: bool = False
    format: int = FORMAT

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "rows": self.rows}, indent=1, sort_keys=True) + "\n"


def read_json(fpath: str) -> dict | None:
    if not fs.exists(fpath):
        return None
    try:
        return json.loads(fs.read_bytes(fpath).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{fpath} is not valid JSON ({e}); it was not written by an extraction: delete it or pick another --activations_dir") from e


def read_manifest(dpath: str, rank: int) -> Manifest | None:
    data = read_json(fs.join(get_process_dpath(dpath, rank), MANIFEST_FNAME))
    if data is None:
        return None
    data.pop("rows", None)
    return Manifest(**data)


def write_manifest(dpath: str, manifest: Manifest) -> None:
    fs.write_text_atomic(fs.join(get_process_dpath(dpath, manifest.process), MANIFEST_FNAME), manifest.to_json(), what="--activations_dir")


def get_shard_metadata(rank: int, split: str, tokens: str, layers: list[str]) -> dict[str, str]:
    """A shard's `__metadata__`: one JSON entry, since safetensors writes several entries in a per-process hash order (bytes would differ between runs)."""
    return {"activations": json.dumps({"format": FORMAT, "process": rank, "split": split, "tokens": tokens, "layers": layers}, sort_keys=True)}


def write_shard(fpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """One shard file, atomically; returns its size in bytes."""
    import safetensors.torch

    data = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    try:
        fs.write_atomic(fpath, lambda fd: fd.write(data))
    except OSError as e:
        from utils.errors import OutputWriteError

        raise OutputWriteError(f"could not write {fpath} ({e.strerror or e}); free space or fix permissions, then rerun the same command to resume") from e
    return len(data)


def check_meta(dpath: str, meta: dict) -> bool:
    """True if DIR already holds this extraction (resume it); a ValueError if it holds another one."""
    old = read_json(fs.join(dpath, META_FNAME))
    if old is None:
        return False
    diff = [k for k in RESUME_KEYS if old.get(k) != meta.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} there vs {meta.get(k)!r} now" for k in diff[:3])
        raise ValueError(
            f"--activations_dir {dpath!r} holds another extraction ({shown}); rerun with the same settings to resume it, or pick a new --activations_dir"
        )
    return True


def write_meta(dpath: str, meta: dict) -> None:
    fs.write_text_atomic(fs.join(dpath, META_FNAME), json.dumps(meta, indent=1, sort_keys=True) + "\n", what="--activations_dir")


def prepare_process_dir(dpath: str, rank: int) -> Manifest:
    """This process's manifest (a fresh one if there is none), after deleting every file of its directory that the manifest does not list."""
    pdpath = get_process_dpath(dpath, rank)
    fs.makedirs(pdpath)
    manifest = read_manifest(dpath, rank) or Manifest(process=rank)
    listed = {s["file"] for s in manifest.shards} | {MANIFEST_FNAME}
    for fname in fs.listdir(pdpath):
        if fname in listed:
            continue
        log.info("activations: removing %s (not in the manifest: a write that did not finish)", fs.join(pdpath, fname))
        fs.remove(fs.join(pdpath, fname))
    missing = [s["file"] for s in manifest.shards if not fs.exists(fs.join(pdpath, s["file"]))]
    if missing:
        raise ValueError(f"{pdpath}: the manifest lists {', '.join(missing[:3])}, which are gone; delete {pdpath} to extract this process's rows again")
    return manifest


def list_shards(dpath: str) -> list[str]:
    """Every durable shard of every process, in (process, shard) order: the files the manifests list."""
    out = []
    for name in sorted(fs.listdir(dpath)):
        if not re.fullmatch(r"p\d{5}", name):
            continue
        manifest = read_manifest(dpath, int(name[1:]))
        if manifest is None:
            continue
        out += [fs.join(dpath, name, s["file"]) for s in manifest.shards]
    return out
