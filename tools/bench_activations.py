"""Activation extraction throughput: the writer thread vs synchronous per-batch copies, same model, same compiled graph, same run.

    PJRT_DEVICE=CPU python -m tools.bench_activations                                   # small ViT on one XLA CPU device
    PJRT_DEVICE=CPU CPU_NUM_DEVICES=4 python -m tools.bench_activations --parallel spmd  # also: local shards vs a plain .cpu() of the sharded outputs

Synthetic images (fixed, seeded) go through `activations.extract` exactly as `--extract_only` runs it; each mode writes its shards to a fresh directory. The
first pass compiles and is not timed; then the modes alternate for `--rounds` rounds and the best examples/s of each is printed, with bytes written per
example. Under SPMD the third mode replaces the local-shard copy with `.cpu()` on every output and reports torch_xla's `ReplicateShardedData` counter and the
compiles it adds.
"""

from __future__ import annotations  # the signatures name activations types, imported only after --help

import argparse
import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from cli.help import ArgumentParser
from utils import process

if TYPE_CHECKING:
    from activations.config import ActivationsConfig
    from activations.source import Source


def get_args() -> argparse.Namespace:
    p = ArgumentParser("python -m tools.bench_activations", description=__doc__)
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT")
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--patch_size", type=int, default=8)
    p.add_argument("--layers", default="blocks.2,blocks.5,blocks.8,blocks.11")
    p.add_argument("--tokens", default="all")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--n_batches", type=int, default=12)
    p.add_argument("--queue", type=int, default=4, help="--extract_queue of the writer-thread mode")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--parallel", default="none", help="none | spmd")
    return p.parse_args()


def make_source(batch_size: int, n_batches: int, img_size: int) -> Source:
    import torch

    from activations.source import Source

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(n_batches, batch_size, 3, img_size, img_size, generator=gen)

    def batches(start: int):
        for k in range(start, n_batches):
            idx = k * batch_size + torch.arange(batch_size)
            yield {"image": images[k], "label": idx % 10, "_mask": torch.ones(batch_size, dtype=torch.bool), "_index": idx}

    return Source("synthetic", n_batches, n_batches * batch_size, batch_size, ("label",), batches)


def run_once(model, task, runtime, source: Source, config: ActivationsConfig, to_host=None) -> dict:
    from activations import extract

    dpath = tempfile.mkdtemp(prefix="bench_activations_")
    try:
        prepared = extract.setup(model, task, runtime, source, config, dpath, {"model": "bench"}, seed=0)
        return extract.run(model, task, runtime, prepared, config, dpath, to_host=to_host)
    finally:
        shutil.rmtree(dpath, ignore_errors=True)


def main() -> None:
    args = get_args()
    os.environ.update(process.env_defaults())  # before torch is imported (after --help, which needs none of it)
    import models
    from activations.config import ActivationsConfig
    from utils.device import make_runtime

    logging.basicConfig(level=logging.WARNING)
    runtime = make_runtime("xla", parallel=args.parallel)
    from tasks.classification import ClassificationTask

    model = models.create_model(args.model, num_classes=10, img_size=args.img_size, patch_size=args.patch_size).eval().to(runtime.device)
    task = ClassificationTask(runtime)
    source = make_source(args.batch_size // runtime.world_size, args.n_batches, args.img_size)
    modes = {"writer thread": args.queue, "synchronous copies": 0}
    common = dict(extract_layers=args.layers, extract_tokens=args.tokens, extract_rows_per_shard=args.batch_size * 4)
    to_host = {}
    if args.parallel == "spmd":
        modes["writer thread, plain .cpu()"] = args.queue
        to_host["writer thread, plain .cpu()"] = lambda outputs: {k: v.cpu() for k, v in outputs.items()}
    first = run_once(model, task, runtime, source, ActivationsConfig(**common, extract_queue=args.queue))  # compiles
    print(f"{runtime.describe()}; {args.model} img {args.img_size} patch {args.patch_size}, layers {args.layers}, tokens {args.tokens}")
    print(f"warm-up: {first['compiles']} graphs compiled, {first['bytes_per_example']:.0f} bytes per example")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, queue in modes.items():
            out = run_once(model, task, runtime, source, ActivationsConfig(**common, extract_queue=queue), to_host.get(name))
            if name not in best or out["examples_per_s"] > best[name]["examples_per_s"]:
                best[name] = out
    for name, out in best.items():
        extra = f", replicated transfers {out['replicated_transfers']}, compiles after warm-up {out['compiles'] - first['compiles']}"
        print(f"{name:28s} {out['examples_per_s']:8.1f} examples/s  (host copies {out['host_copy_s']:.2f} s, writes {out['write_s']:.2f} s{extra})")
    ratio = best["writer thread"]["examples_per_s"] / best["synchronous copies"]["examples_per_s"]
    print(f"writer thread / synchronous: {ratio:.2f}x; {best['writer thread']['bytes_per_example']:.0f} bytes written per example")


if __name__ == "__main__":
    main()
