"""One extraction pass: the split's batches through one compiled graph per step (the task's eval forward with the capture hooks), the writer thread behind.

The loop only launches steps and hands their outputs to the writer (`writer.submit`); nothing is read on the host in the loop, so the device runs ahead of
the copies by up to `--extract_queue` steps. The compile count after the first step and at the end says whether any step compiled again (it should not: fixed
shapes, one graph), and torch_xla's `ReplicateShardedData` counter says whether any output was gathered to the host in full.
"""

import importlib.metadata
import itertools
import logging
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from activations import files, transfer
from activations.capture import ActivationCapture
from activations.config import ActivationsConfig
from activations.source import Source
from activations.writer import ShardWriter
from utils.device import Runtime

log = logging.getLogger(__name__)

STORED_NAMES = {"_index": "index", "cell_line": "context"}  # batch keys -> shard tensor names (others keep theirs)


class _TaskForward(nn.Module):
    """The task's eval forward as a module call, so `torch.func.functional_call` can run it with meta parameters."""

    def __init__(self, task, model: nn.Module):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.task.eval_outputs(self.model, batch)


def probe(capture: ActivationCapture, model: nn.Module, task, batch: dict[str, torch.Tensor]) -> None:
    """Every layer's output shape from one forward on the meta device: no device work, no weights touched."""
    meta_batch = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in batch.items()}
    state = {f"model.{k}": torch.empty_like(v, device="meta") for k, v in itertools.chain(model.named_parameters(), model.named_buffers())}
    forward = _TaskForward(task, model)
    with torch.no_grad(), capture:
        capture.probe(lambda: torch.func.functional_call(forward, state, (meta_batch,)))


def get_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "torch_xla", "timm", "safetensors"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def make_meta(capture: ActivationCapture, token_ids: dict[str, torch.Tensor], config: ActivationsConfig, source: Source, runtime: Runtime, info: dict) -> dict:
    layers = {
        name: {"shape": list(capture.row_shape(name)), "dtype": config.extract_dtype, "layer_shape": list(capture.raw_shapes[name]), "token_ids": ids.tolist()}
        for name, ids in token_ids.items()
    }
    return {
        "format": files.FORMAT,
        "model": info.get("model"),
        "checkpoint": info.get("checkpoint"),
        "checkpoint_step": info.get("checkpoint_step"),
        "layers": layers,
        "tokens": config.get_tokens().describe(),
        "split": source.split,
        "n_examples": source.n_examples,
        "max_examples": config.extract_max_examples,
        "keys": ["index", *[STORED_NAMES.get(k, k) for k in source.keys]],
        "process_count": runtime.world_size,
        "batch_size": source.batch_size * runtime.world_size,
        "rows_per_shard": config.extract_rows_per_shard,
        "versions": get_versions(),
        "run": info.get("flags", {}),
    }


def _extract_step(model: nn.Module, task, runtime: Runtime, capture: ActivationCapture, keys: tuple[str, ...], batch: dict) -> dict[str, torch.Tensor]:
    """The task's eval forward; returns the stashed activations (pinned to the batch sharding) and the row keys. Compiled as one graph."""
    with torch.no_grad(), runtime.autocast():
        task.eval_outputs(model, batch)
    out = {f"act/{name}": transfer.constrain_rows(runtime, t) for name, t in capture.pop().items()}
    return {**out, "_mask": batch["_mask"], "_index": batch["_index"], **{k: batch[k] for k in keys}}


def get_start_batch(dpath: str, runtime: Runtime, own: files.Manifest) -> int:
    """Where this process's loop starts: its own resume point; under multi-host SPMD every host runs every step, so the earliest one of any host."""
    if not (transfer._is_spmd(runtime) and runtime.world_size > 1):
        return own.next_batch
    found = [files.read_manifest(dpath, r) for r in range(runtime.world_size)]
    return min(m.next_batch if m is not None else 0 for m in found)


def setup(model: nn.Module, task, runtime: Runtime, source: Source, config: ActivationsConfig, dpath: str, info: dict, seed: int):
    """The start-up half (inside `utils.errors.startup()`): layers, shapes, meta.json, this process's directory; returns what `run` needs."""
    plain = runtime.unwrap(model)
    plain.eval()
    capture = ActivationCapture(plain, config.layers, config.get_tokens(), config.extract_dtype, seed=seed)
    probe(capture, plain, task, next(source.batches(0)))
    token_ids = capture.setup_indices(runtime.device)
    meta = make_meta(capture, token_ids, config, source, runtime, info)
    files.fs.makedirs(dpath)
    resumed = files.check_meta(dpath, meta)
    if runtime.is_main and not resumed:
        files.write_meta(dpath, meta)
    manifest = files.prepare_process_dir(dpath, runtime.rank)
    if config.extract_max_examples:
        n, w, r = config.extract_max_examples, runtime.world_size, runtime.rank
        quota = n // w + (r < n % w)
        source = source.limit(-(-(n // w + (n % w > 0)) // source.batch_size))
    else:
        quota = None
    log.info(
        "activations: %s of %s (%d batches of %d per process, %d examples in the split), tokens %s, %s, into %s%s",
        ", ".join(f"{n} {meta['layers'][n]['shape']}" for n in config.layers),
        source.split,
        source.n_batches,
        source.batch_size,
        source.n_examples,
        meta["tokens"],
        config.extract_dtype,
        dpath,
        f"; resuming at batch {manifest.next_batch} ({manifest.rows} rows written)" if resumed and manifest.rows else "",
    )
    return capture, source, manifest, quota, meta


def run(model: nn.Module, task, runtime: Runtime, prepared, config: ActivationsConfig, dpath: str, to_host: Callable | None = None) -> dict:
    """The pass itself; returns this process's figures (rows, shards, bytes, examples/s, compile and transfer counts).

    `to_host`: another device -> host copy of a step's outputs (tools/bench_activations.py measures a plain `.cpu()` under SPMD with it)."""
    capture, source, manifest, quota, meta = prepared
    plain = runtime.unwrap(model)
    start = get_start_batch(dpath, runtime, manifest)
    names = {f"act/{n}": n for n in config.layers} | {k: STORED_NAMES.get(k, k) for k in ("_index", *source.keys)} | {"_mask": "_mask"}
    names.pop("_mask")
    rows_per_process = source.batch_size
    writer = ShardWriter(
        dpath,
        manifest,
        names=names,
        rows_per_shard=config.extract_rows_per_shard,
        max_queue=config.extract_queue,
        to_host=to_host or (lambda outputs: transfer.to_host(runtime, outputs, rows_per_process)),
        metadata=files.get_shard_metadata(runtime.rank, source.split, meta["tokens"], config.layers),
        quota=quota,
    )
    step_fn = runtime.compile(lambda batch: _extract_step(plain, task, runtime, capture, source.keys, batch), name="extract_step")
    replicated0 = transfer.replicated_transfers(runtime)
    compiles_first = None
    t0 = time.perf_counter()
    with capture:
        try:
            host_batches = itertools.islice(source.batches(start), source.n_batches - start)
            for k, batch in enumerate(runtime.device_loader(host_batches), start=start):
                writer.submit(k, step_fn(batch))
                if compiles_first is None:
                    compiles_first = runtime.compile_count()
            manifest = writer.close(source.n_batches)
        except BaseException:
            writer.abort()
            raise
    wall_s = time.perf_counter() - t0
    return _summary(runtime, writer, manifest, wall_s, compiles_first, replicated0)


def _summary(runtime: Runtime, writer: ShardWriter, manifest: files.Manifest, wall_s: float, compiles_first: int | None, replicated0: int | None) -> dict:
    stats = writer.stats
    out = {
        "rows": manifest.rows,
        "shards": len(manifest.shards),
        "rows_this_run": stats.rows,
        "bytes_per_example": round(stats.bytes / stats.rows, 1) if stats.rows else 0.0,
        "examples_per_s": round(stats.rows / wall_s, 2) if wall_s > 0 else 0.0,
        "host_copy_s": round(stats.host_s, 3),
        "write_s": round(stats.write_s, 3),
        "queue_wait_s": round(stats.wait_s, 3),
    }
    n = runtime.compile_count()
    if n is not None:
        out |= {"compiles_after_first_step": compiles_first, "compiles": n, "replicated_transfers": transfer.replicated_transfers(runtime) - replicated0}
        if compiles_first is not None and n > compiles_first:
            log.warning(
                "activations: %d compile(s) after the first extract step; a batch changed shape or a host read sits inside the step", n - compiles_first
            )
    log.info("activations: %s", "  ".join(f"{k} {v}" for k, v in out.items()))
    return out
