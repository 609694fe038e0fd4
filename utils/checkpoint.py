"""Checkpoints: atomic writes, keep-last-K, `--resume auto|PATH`, safe loading.

Layout: `output_dir/checkpoint-{step:08d}.pt`. A checkpoint is written to a temporary name in the
same directory, flushed and fsynced, then renamed: a crash mid-write leaves the previous
checkpoints intact and at worst a `.tmp` file. Old checkpoints are deleted only after the new one
is complete, and never the one just written. Every load uses `torch.load(weights_only=True)`; model
weights keep timm's state_dict names, so `timm.create_model(name, checkpoint_path=...)` reads them too.
The output dir may be remote (`gs://...`): see `utils.fs`.
"""

import logging
import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch

from utils import fs
from utils.errors import OutputWriteError, first_line

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


def to_cpu(obj):
    """Recursively copy tensors to the host (XLA/CUDA -> CPU) so the file never references a device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def get_rng_state() -> dict:
    """RNG states of python, numpy and torch (CPU, and CUDA when present), as types `weights_only=True` can load.

    The XLA device's RNG is the runtime's (`Runtime.get_rng_state`). TensorFlow keeps no state worth saving: random pp ops in the train pipeline are stateless,
    keyed by (seed, epoch, example index), see `big_vision.input_pipeline`.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def get_checkpoint_fpath(output_dpath: str, step: int) -> str:
    return fs.join(output_dpath, f"checkpoint-{step:08d}.pt")


def get_checkpoint_step(fpath: str) -> int | None:
    """The step in a `checkpoint-{step}.pt` file name; None for other names."""
    m = CKPT_RE.match(os.path.basename(fpath))
    return int(m.group(1)) if m else None


def list_checkpoints(output_dpath: str) -> list[tuple[int, str]]:
    """(step, path) of every finished checkpoint in the dir (local or remote), newest first; temp files are not listed."""
    found = [(int(m.group(1)), fs.join(output_dpath, f)) for f in fs.listdir(output_dpath) if (m := CKPT_RE.match(f))]
    return sorted(found, reverse=True)


def save_checkpoint(state: dict, output_dpath: str, step: int, keep_last: int = 3) -> str:
    """Write `state` atomically as checkpoint-{step}.pt, then prune to the newest `keep_last` (the new file always stays)."""
    fs.makedirs(output_dpath)
    fpath = get_checkpoint_fpath(output_dpath, step)
    cpu_state = to_cpu(state)
    try:
        fs.write_atomic(fpath, lambda fd: torch.save(cpu_state, fd))
    except (OSError, RuntimeError) as e:
        os_error = _find_os_error(e)
        if os_error is None:
            raise  # torch.save's RuntimeErrors that no failed write caused are bugs
        raise OutputWriteError(
            f"could not write checkpoint {fpath} ({first_line(os_error)}{_free_space(output_dpath)}); the earlier checkpoints in {output_dpath} are intact: "
            "free space or fix permissions, then rerun with --resume auto"
        ) from e
    # Only now, with the new file complete under its final name, may older ones go.
    if keep_last > 0:
        older = [f for _, f in list_checkpoints(output_dpath) if f != fpath]
        for old_fpath in older[keep_last - 1 :]:
            fs.remove(old_fpath)
    return fpath


def _find_os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind `e` (torch's zip writer turns a failed write into a RuntimeError about positions, with the OSError as its context)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _free_space(dpath: str) -> str:
    if fs.is_remote(dpath) or not os.path.isdir(dpath):
        return ""
    return f"; {shutil.disk_usage(dpath).free / 2**20:.0f} MiB free there"


WEIGHTS_FIX = "pass a checkpoint-*.pt written by main.py, a timm-style state dict (.pt/.pth) or a .safetensors file"


def load_file(fpath: str, what: str = "checkpoint") -> dict:
    """Load a checkpoint or weights file safely (`.pt`/`.pth` with weights_only, or `.safetensors`), local or remote.

    Anything that is not one (a text file, a truncated or corrupt file, a pickle of arbitrary objects) is a ValueError naming `what` (the flag) and the path.
    """
    if not fs.isfile(fpath):
        raise FileNotFoundError(f"{what} {fpath!r} does not exist" + ("; it is a directory" if fs.isdir(fpath) else "") + f"; {WEIGHTS_FIX}")
    try:
        if fpath.endswith(".safetensors"):
            import safetensors.torch

            if fs.is_remote(fpath):
                state = safetensors.torch.load(fs.read_bytes(fpath))
            else:
                state = safetensors.torch.load_file(fpath, device="cpu")
        else:
            with fs.open_bytes(fpath) as fd:
                state = torch.load(fd, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{what} {fpath!r} is not a readable checkpoint ({type(e).__name__}: {first_line(e)}); {WEIGHTS_FIX}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{what} {fpath!r} holds a {type(state).__name__}, not a state dict; {WEIGHTS_FIX}")
    return state


def find_resume(resume: str, output_dpath: str) -> tuple[str, dict] | None:
    """`auto`: newest checkpoint in the output dir that loads (corrupt ones are reported and skipped); else a path."""
    if not resume:
        return None
    if resume != "auto":
        check_resume_path(resume)
        return resume, load_file(resume, what="--resume")
    found = list_checkpoints(output_dpath)
    bad = []
    for step, fpath in found:
        try:
            state = load_file(fpath)
        except Exception as e:  # a truncated or corrupt file: say which, loudly, then fall back to the previous one
            log.warning(
                "--resume auto: checkpoint %s (step %d) does not load (%s: %s); skipping it and trying the previous one", fpath, step, type(e).__name__, e
            )
            bad.append(os.path.basename(fpath))
            continue
        if bad:
            log.warning("--resume auto: resuming from %s (step %d), not from the newer unreadable %s", fpath, step, ", ".join(bad))
        return fpath, state
    if bad:
        raise ValueError(
            f"--resume auto: none of the {len(bad)} checkpoint(s) in {output_dpath} loads ({', '.join(bad)}); delete them to start over, "
            "or pass --resume PATH to a good copy"
        )
    log.info("--resume auto: no checkpoint in %s, starting from scratch", output_dpath)
    return None


def check_resume_path(resume: str) -> None:
    """`--resume PATH` names a file (`auto` and empty need none)."""
    if resume and resume != "auto" and not fs.isfile(resume):
        raise FileNotFoundError(f"--resume {resume!r} does not exist; pass a checkpoint-*.pt file or --resume auto to take the newest in --output_dir")


def check_writable_dir(dpath: str, what: str = "--output_dir") -> None:
    """Create `dpath` and write, fsync and delete a probe file in it: a path that is a file, a read-only filesystem or missing permissions fail here,
    in a second, not at the first checkpoint."""
    if fs.is_remote(dpath):
        fs.makedirs(dpath)
        return
    if os.path.exists(dpath) and not os.path.isdir(dpath):
        raise ValueError(f"{what} {dpath!r} is a file, not a directory; pick a directory path (it is created if missing)")
    try:
        os.makedirs(dpath, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dpath, prefix=".write-probe-") as fd:
            fd.write(b"x")
            fd.flush()
            os.fsync(fd.fileno())
    except OSError as e:
        raise ValueError(f"{what} {dpath!r} is not writable ({e.strerror or first_line(e)}); pick a directory this process can write") from e


def check_output_dir(resume: str, output_dpath: str) -> None:
    """Refuse to mix two runs' checkpoints in one dir: keep-last-K and `--resume auto` go by step number and would pick the wrong run's files."""
    check_resume_path(resume)
    if not output_dpath:
        return
    check_writable_dir(output_dpath)
    found = list_checkpoints(output_dpath)
    if not found:
        return
    newest = os.path.basename(found[0][1])
    if not resume:
        raise ValueError(
            f"--output_dir {output_dpath!r} already holds checkpoints (newest {newest}) of an earlier run; add --resume auto to continue it, "
            "or pick a new --output_dir to start over"
        )
    step = get_checkpoint_step(resume) if resume != "auto" else None
    newer = [os.path.basename(f) for s, f in found if step is not None and s > step]
    if newer:
        raise ValueError(
            f"--output_dir {output_dpath!r} holds checkpoints newer than --resume {resume!r} (step {step}): {', '.join(newer)}; "
            "a later --resume auto would take those, not this run's. Resume into a new --output_dir, or delete them"
        )


def get_model_state(state: dict) -> dict:
    """The model weights from one of our checkpoints or a plain (timm-style) state dict."""
    for key in ("model", "state_dict", "model_state_dict"):
        if key in state and isinstance(state[key], dict):
            return state[key]
    return state


def load_model_weights(model: torch.nn.Module, fpath: str, strict: bool = True, what: str = "model") -> None:
    """Load weights from a file with a clear error that names the missing, unexpected and mis-shaped keys."""
    load_model_state(model, get_model_state(load_file(fpath, what=what)), source=fpath, strict=strict, what=what)


def _first(items: list[str], n: int = 8) -> str:
    return f"{items[:n]}{' ...' if len(items) > n else ''}"


def load_model_state(model: torch.nn.Module, sd: dict, source: str, strict: bool = True, what: str = "model") -> None:
    """Load a state dict into `model`; a ValueError names the missing, unexpected and mis-shaped keys.

    Shape mismatches are checked first: `load_state_dict` raises a RuntimeError for them even with
    strict=False, and its message names neither the file nor the fix. They are an error with
    strict=False too (loading half a tensor is never what anyone means).
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    own = model.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"{what} weights in {source} do not match the architecture (another model name, --num_classes or --img_size?): "
            f"size mismatches {_first(mismatched)}, missing keys {_first(missing)}, unexpected keys {_first(unexpected)}"
        )
    model.load_state_dict(sd, strict=False)
