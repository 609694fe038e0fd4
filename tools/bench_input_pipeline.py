"""Benchmark the ImageNet-style train input pipeline (TFDS + pp) against timm's loader on the same JPEG files.

The data is built at run time from the photos that ship with scikit-image (`skimage.data`): random crops, rescales and flips give
`--n_images` distinct RGB images of ImageNet-like sizes (about 60% at 500 px on the longer side, like ImageNet's typical 500x375 and
500x333, the rest 300 to 800 px), JPEG-encoded with PIL at quality 90. The same files are written twice: as a TFDS dataset
(GeneratorBasedBuilder, the bytes stored unchanged) and as an ImageFolder tree for timm.

Timed, each for `--n_batches` batches after `--warmup_batches` untimed ones, epochs repeating as needed, ours and big_vision's each in a fresh
interpreter per measurement (`--same_process`: ours in this one):
- ours: `big_vision.train_stream.make_train_stream` as training reads it (variant per_epoch: `make_train_dataset` per epoch), with the
  ImageNet train pp string
  (`decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)|keep("image", "label")`), handed to torch by `iterate_torch`, one variant
  per `--variants` entry (see VARIANTS);
- timm: `timm.data.create_dataset('', root=folder)` +
  `timm.data.create_loader(is_training=True, input_size=(3, 224, 224), use_prefetcher=False, color_jitter=0)`: RandomResizedCrop + flip +
  ToTensor + normalize, the same work as our pp string (timm's default colour jitter is switched off because our string has none), once per
  `--timm_workers` entry; the best counts;
- big_vision (with `--big_vision_dir`): its own `input_pipeline.training` on the same TFDS data, in a fresh process, in the environment the
  bench was started in (as it ships) and with TensorFlow's BFC host allocator, which ours turns on (utils/process.py);
- the limits: `tf.image.decode_and_crop_jpeg` alone with inception-crop windows sampled beforehand, in a tight eager loop on one thread and in
  a batched tf.data map over all cores (no pipeline that decodes these JPEGs can beat it on this machine), and the same plus the pp string's
  resize to 224 (the least work of this pp string with the pp ops' kernels: TF's JPEG decoder, big_vision/pp/native.py's resize).

`--rounds` repeats ours and timm alternately and keeps each one's best, because the machine may be shared.

Usage: python -m tools.bench_input_pipeline [--n_images 768] [--batch_size 64] [--n_batches 60] [--variants default,nondet,...]
[--timm_workers 1,2] [--rounds 2]
"""

from __future__ import annotations  # the signatures name tfds types, imported only after --help

import argparse
import dataclasses
import gc
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

# The environment as the user started the bench, before utils/process.py adds our defaults: big_vision runs in it, as it ships.
USER_ENV = dict(os.environ)

from cli.help import ArgumentParser  # noqa: E402

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

log = logging.getLogger("bench")

PP_TRAIN = 'decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)|keep("image", "label")'
PP_FULL_DECODE = 'decode|inception_crop(224)|flip_lr|value_range(-1, 1)|keep("image", "label")'
# name -> (make_train_dataset kwargs, extra tf.data options, pp string). Applied on top of make_train_dataset's defaults.
VARIANTS: dict[str, tuple[dict, dict, str]] = {
    "default": ({}, {}, PP_TRAIN),  # what training runs: every epoch from one pipeline, one epoch ahead (big_vision/train_stream.py)
    "per_epoch": ({"per_epoch": True}, {}, PP_TRAIN),  # one pipeline per epoch, each started when the previous one ends
    "ahead0": ({"epochs_ahead": 0}, {}, PP_TRAIN),
    "ahead2": ({"epochs_ahead": 2}, {}, PP_TRAIN),
    "no_batch_tail": ({"batch_tail": False}, {}, PP_TRAIN),  # the whole pp string per example (value_range before the batching)
    "nondet": ({"deterministic": False}, {}, PP_TRAIN),
    "intra1": ({}, {"max_intra_op_parallelism": 1}, PP_TRAIN),
    "nondet_intra1": ({"deterministic": False}, {"max_intra_op_parallelism": 1}, PP_TRAIN),
    "pool2": ({"private_threadpool_size": 2}, {}, PP_TRAIN),
    "pool4": ({"private_threadpool_size": 4}, {}, PP_TRAIN),
    "npc2": ({"num_parallel_calls": 2}, {}, PP_TRAIN),
    "npc4": ({"num_parallel_calls": 4}, {}, PP_TRAIN),
    "prefetch4": ({"prefetch": 4}, {}, PP_TRAIN),
    "full_decode": ({}, {}, PP_FULL_DECODE),
}


def get_cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its live child processes (timm's workers), from /proc."""
    t = os.times()
    total = t.user + t.system
    ticks = os.sysconf("SC_CLK_TCK")
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fd:
                pids = fd.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fd:
                    fields = fd.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


@dataclasses.dataclass
class Measurement:
    images_per_s: float  # wall clock
    cpu_ms_per_image: float  # CPU time of all threads and worker processes: what the work costs, whatever else runs on the machine
    n_images: int


def measure(make_batches: Callable[[], Iterator[int]], n_batches: int, warmup_batches: int) -> Measurement:
    """Exactly `n_batches` batches after `warmup_batches` untimed ones."""
    it = make_batches()
    for _ in range(warmup_batches):
        next(it)
    n_images = 0
    start, cpu_start = time.perf_counter(), get_cpu_seconds()
    for _ in range(n_batches):
        n_images += next(it)
    wall, cpu = time.perf_counter() - start, get_cpu_seconds() - cpu_start
    it.close()  # stop the pipeline's background work before the next measurement starts
    del it
    gc.collect()
    return Measurement(n_images / wall, 1e3 * cpu / n_images, n_images)


def make_ours(builder: tfds.core.DatasetBuilder, batch_size: int, variant: str) -> Callable[[], Iterator[int]]:
    import torch

    from big_vision import input_pipeline as ip
    from big_vision import train_stream
    from utils.tf_import import tf  # torch_xla before TensorFlow

    kwargs, extra_options, pp_str = VARIANTS[variant]
    options = tf.data.Options()
    for name, value in extra_options.items():
        setattr(options.threading, name, value)

    def batches() -> Iterator[int]:
        kw = dict(kwargs)
        per_epoch = kw.pop("per_epoch", False)
        if per_epoch:
            make = lambda epoch: ip.make_train_dataset(builder, "train", pp_str, batch_size, epoch=epoch, **kw).with_options(options)  # noqa: E731
        else:  # as training reads it: every epoch from one pipeline
            stream = train_stream.make_train_stream(builder, "train", pp_str, batch_size, **kw).with_options(options)
            steps = ip.get_train_steps_per_epoch(builder, "train", batch_size, 1)
            epochs = train_stream.TrainStream(lambda epoch, step: stream, steps)
            make = lambda epoch: epochs.epoch(epoch)  # noqa: E731
        epoch = 0
        while True:
            for batch in ip.iterate_torch(make(epoch)) if per_epoch else make(epoch):
                assert batch["image"].shape == (batch_size, 3, 224, 224) and batch["image"].dtype == torch.float32
                yield batch["image"].shape[0]
            epoch += 1

    return batches


def make_timm(folder_dpath: str, batch_size: int, num_workers: int) -> Callable[[], Iterator[int]]:
    import timm.data
    import torch

    dataset = timm.data.create_dataset("", root=folder_dpath)
    loader = timm.data.create_loader(
        dataset,
        input_size=(3, 224, 224),
        batch_size=batch_size,
        is_training=True,
        color_jitter=0.0,
        num_workers=num_workers,
        use_prefetcher=False,
        device=torch.device("cpu"),
    )

    def batches() -> Iterator[int]:
        while True:
            for x_bchw, _ in loader:
                assert x_bchw.shape == (batch_size, 3, 224, 224) and x_bchw.dtype == torch.float32
                yield x_bchw.shape[0]

    return batches


def get_decode_ceiling(files: list[tuple[str, int]], seconds: float, seed: int) -> dict[str, Measurement]:
    """decode_and_crop_jpeg alone (inception-crop windows sampled beforehand) on one thread and in tf.data over all cores; full decode_jpeg on one thread."""
    from big_vision.pp import builder as pp_builder
    from utils.tf_import import tf  # torch_xla before TensorFlow

    tf.random.set_seed(seed)
    jpegs = []
    for fpath, _ in files:
        with open(fpath, "rb") as fd:
            jpegs.append(tf.constant(fd.read()))
    windows = []
    for jpeg in jpegs:
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(jpeg),
            tf.zeros([0, 0, 4]),
            area_range=(0.05, 1.0),
            aspect_ratio_range=(0.75, 1.33),
            min_object_covered=0,
            use_image_if_no_bounding_boxes=True,
        )
        windows.append(tf.stack([begin[0], begin[1], size[0], size[1]]))

    def loop(fn: Callable[[int], object], per_call: int = 1) -> Measurement:
        for i in range(min(20, len(jpegs))):
            fn(i)
        n, start, cpu_start = 0, time.perf_counter(), get_cpu_seconds()
        while time.perf_counter() - start < seconds:
            fn(n % len(jpegs))
            n += 1
        wall, cpu = time.perf_counter() - start, get_cpu_seconds() - cpu_start
        return Measurement(n * per_call / wall, 1e3 * cpu / (n * per_call), n * per_call)

    out = {
        "decode_and_crop_jpeg, 1 thread": loop(lambda i: tf.image.decode_and_crop_jpeg(jpegs[i], windows[i], channels=3)),
        "decode_jpeg (whole image), 1 thread": loop(lambda i: tf.image.decode_jpeg(jpegs[i], channels=3)),
    }
    # In tf.data over all cores, batched (one Python call per 64 images, as a pipeline hands out batches); each image's output is one value
    # (its shape, or a pixel after the resize: a static shape would let TF skip the work).
    decode = lambda jpeg, window: tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)  # noqa: E731
    out["decode_and_crop_jpeg, tf.data all cores"] = loop_dataset(jpegs, windows, lambda j, w: tf.shape(decode(j, w)), loop)
    # The same plus the pp string's resize to 224 (ResizeBilinear in float32, clipped and cast back to uint8 as big_vision's op does): the least
    # work any pipeline of this pp string does per image with the pp ops' kernels (the resize is big_vision/pp/native.py's where it builds).
    resize_pp = pp_builder.get_preprocess_fn("resize(224)")
    out[DECODE_RESIZE] = loop_dataset(jpegs, windows, lambda j, w: resize_pp({"image": decode(j, w)})["image"][0, 0], loop)
    return out


def loop_dataset(jpegs: list, windows: list, fn: Callable, loop: Callable, batch: int = 64) -> Measurement:
    from utils.tf_import import tf

    ds = tf.data.Dataset.from_tensor_slices((tf.stack(jpegs), tf.stack(windows))).repeat()
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).batch(batch).prefetch(2)
    batches = iter(ds)
    for _ in range(5):
        next(batches)
    return loop(lambda i: next(batches), batch)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m tools.bench_input_pipeline", description=__doc__)
    parser.add_argument("--n_images", type=int, default=768, help="distinct JPEGs to write")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--n_batches", type=int, default=60, help="timed batches per measurement (the same for every loader)")
    parser.add_argument("--warmup_batches", type=int, default=5)
    parser.add_argument(
        "--variants", default="default", help=f"comma-separated variants of our pipeline, the first one is the headline figure: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--timm_workers", default="1,2", help="comma-separated num_workers to try for timm (its best counts)")
    parser.add_argument("--rounds", type=int, default=2, help="repeat all measurements, keep each one's best")
    parser.add_argument("--ceiling_seconds", type=float, default=5.0)
    parser.add_argument("--no_timm", action="store_true", help="only our variants (for sweeps)")
    parser.add_argument("--same_process", action="store_true", help="measure ours in this process, not in a fresh one per measurement (faster sweeps)")
    parser.add_argument("--measure_one", default=None, help=argparse.SUPPRESS)  # internal: one measurement of this variant, printed as JSON
    parser.add_argument("--work_dir", default=None, help="where the JPEGs and the TFDS dataset go (default: a temp dir, deleted afterwards)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--big_vision_dir",
        default=None,
        help="a google-research/big_vision checkout: also time its own input_pipeline.training on the same data, in a fresh process each round "
        "(its requirements jax, flax, einops, overrides must be importable)",
    )
    parser.add_argument(
        "--big_vision_allocator",
        default="both",
        choices=["both", "as_shipped", "bfc"],
        help="big_vision's pipeline in the environment it ships with, with TensorFlow's BFC host allocator that ours turns on (utils/process.py), or both",
    )
    parser.add_argument(
        "--big_vision_extra_path", default=None, help="a directory with big_vision's requirements (pip install --target DIR jax flax einops overrides)"
    )
    return parser


def prepare_data(folder_dpath: str, data_dpath: str, n_images: int, seed: int) -> tuple[list[tuple[str, int]], tfds.core.DatasetBuilder]:
    """The JPEG files (written unless `folder_dpath` holds them already) and the TFDS dataset of the same bytes."""
    import numpy as np
    import tensorflow_datasets as tfds

    from tools import bench_jpegs

    start = time.perf_counter()
    if os.path.isdir(folder_dpath):
        files = [
            (os.path.join(folder_dpath, c, f), int(c.split("_")[0]))
            for c in sorted(os.listdir(folder_dpath))
            for f in sorted(os.listdir(os.path.join(folder_dpath, c)))
        ]
    else:
        files = bench_jpegs.write_jpegs(folder_dpath, n_images, seed)
    builder = bench_jpegs.make_tfds(data_dpath, folder_dpath)
    sizes = np.array([os.path.getsize(f) for f, _ in files])
    from PIL import Image

    shapes = np.array([Image.open(f).size for f, _ in files[:200]])
    log.info(
        "%d JPEGs (%.0f KiB mean, %.1f MiB total; sizes %s..%s, median %s) written and prepared as TFDS in %.1f s",
        len(files),
        sizes.mean() / 1024,
        sizes.sum() / 2**20,
        shapes.min(0),
        shapes.max(0),
        np.median(shapes, 0),
        time.perf_counter() - start,
    )
    file_bytes = {open(fpath, "rb").read() for fpath, _ in files}
    stored = builder.as_dataset(split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}).take(8)
    assert all(ex["image"] in file_bytes for ex in tfds.as_numpy(stored)), "TFDS must store the JPEG bytes unchanged"
    return files, builder


def run_measurement(cmd: list[str], env: dict, cwd: str, what: str) -> Measurement:
    """One measurement in a fresh interpreter that prints it as its last JSON line."""
    import subprocess

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit((r.stderr.strip().splitlines() or [f"{what} failed"])[-1])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return Measurement(out["images_per_s"], out["cpu_ms_per_image"], out["n_images"])


def measure_ours(args: argparse.Namespace, builder: tfds.core.DatasetBuilder, variant: str, work_dpath: str) -> Measurement:
    """Ours in a fresh interpreter (`--measure_one`), as big_vision's pipeline is measured; in this one with `--same_process`."""
    import sys

    if args.same_process:
        return measure(make_ours(builder, args.batch_size, variant), args.n_batches, args.warmup_batches)
    cmd = [sys.executable, "-m", "tools.bench_input_pipeline", "--measure_one", variant, "--work_dir", work_dpath, "--n_images", str(args.n_images)]
    cmd += ["--batch_size", str(args.batch_size), "--n_batches", str(args.n_batches), "--warmup_batches", str(args.warmup_batches), "--seed", str(args.seed)]
    return run_measurement(cmd, dict(os.environ), os.path.dirname(os.path.dirname(os.path.abspath(__file__))), f"ours {variant}")


def measure_big_vision(args: argparse.Namespace, builder: tfds.core.DatasetBuilder, bfc: bool) -> Measurement:
    """big_vision's own pipeline on the same TFDS data and pp string, in a fresh interpreter (tools/bench_big_vision_worker.py).

    It runs in the user's environment (`bfc`: with TF_CPU_ALLOCATOR_USE_BFC=true added), not in ours, which utils/process.py extends.
    """
    import sys

    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_big_vision_worker.py")
    cmd = [sys.executable, worker, "--big_vision_dir", args.big_vision_dir, "--data_dir", os.path.dirname(os.path.dirname(builder.data_dir))]
    cmd += ["--name", builder.info.name, "--pp", PP_TRAIN, "--batch_size", str(args.batch_size), "--n_batches", str(args.n_batches)]
    cmd += ["--warmup_batches", str(args.warmup_batches)]
    paths = [os.path.abspath(args.big_vision_dir)] + ([os.path.abspath(args.big_vision_extra_path)] if args.big_vision_extra_path else [])
    env = {**USER_ENV, "PYTHONPATH": os.pathsep.join(paths + [p for p in USER_ENV.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if bfc:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    return run_measurement(cmd, env, tempfile.gettempdir(), "big_vision's pipeline")


BIG_VISION = "big_vision input_pipeline.training"
DECODE_RESIZE = "decode_and_crop_jpeg + resize, tf.data all cores"
BIG_VISION_BFC = "big_vision, TF's BFC allocator"


def get_big_vision_runs(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(result name, with the BFC allocator) of each big_vision measurement per round."""
    if not args.big_vision_dir:
        return []
    runs = {"as_shipped": [(BIG_VISION, False)], "bfc": [(BIG_VISION_BFC, True)]}
    runs["both"] = runs["as_shipped"] + runs["bfc"]
    return runs[args.big_vision_allocator]


def measure_rounds(
    args: argparse.Namespace, builder: tfds.core.DatasetBuilder, work_dpath: str, variants: list[str], timm_workers: list[int]
) -> dict[str, list[Measurement]]:
    """Ours (each variant) and timm (each worker count) in turns, `args.rounds` times; every measurement of each."""
    results: dict[str, list[Measurement]] = {}
    for r in range(args.rounds):
        for variant in variants:
            m = measure_ours(args, builder, variant, work_dpath)
            log.info("round %d  ours %-14s %7.1f images/s  %.2f CPU ms/image", r, variant, m.images_per_s, m.cpu_ms_per_image)
            results.setdefault(f"ours {variant}", []).append(m)
        for name, bfc in get_big_vision_runs(args):
            m = measure_big_vision(args, builder, bfc)
            log.info("round %d  %-24s %7.1f images/s  %.2f CPU ms/image", r, name, m.images_per_s, m.cpu_ms_per_image)
            results.setdefault(name, []).append(m)
        for workers in timm_workers:
            m = measure(make_timm(os.path.join(work_dpath, "imagefolder"), args.batch_size, workers), args.n_batches, args.warmup_batches)
            log.info("round %d  timm workers=%d   %7.1f images/s  %.2f CPU ms/image", r, workers, m.images_per_s, m.cpu_ms_per_image)
            results.setdefault(f"timm workers={workers}", []).append(m)
    return results


def print_report(args: argparse.Namespace, n_files: int, best: dict[str, Measurement], ceiling: dict[str, Measurement], ours_name: str) -> None:

    print(
        f"\n{n_files} JPEGs, batch {args.batch_size}, {args.n_batches * args.batch_size} timed images per measurement "
        f"after {args.warmup_batches} warm-up batches, "
        f"best of {args.rounds} rounds, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  {'':<48} {'images/s':>9} {'CPU ms/image':>13}")
    for k, m in [*best.items(), *ceiling.items()]:
        print(f"  {k:<48} {m.images_per_s:9.1f} {m.cpu_ms_per_image:13.2f}")
    # Our default settings are what a run gets: compare those with timm's best; the other variants are for tuning.
    ours = best[ours_name]
    timm_names = [k for k in best if k.startswith("timm")]
    if timm_names:
        timm_name = max(timm_names, key=lambda k: best[k].images_per_s)
        timm = best[timm_name]
        for name in (k for k in best if k.startswith("ours") or k.startswith("big_vision")):
            m = best[name]
            print(
                f"{name}: {m.images_per_s:.1f} images/s vs {timm_name}: {timm.images_per_s:.1f} images/s: ratio {m.images_per_s / timm.images_per_s:.2f}x "
                f"(CPU per image {timm.cpu_ms_per_image / m.cpu_ms_per_image:.2f}x less)"
            )
    for name in (BIG_VISION, BIG_VISION_BFC):
        if name in best:
            bv = best[name]
            print(
                f"{ours_name} vs {name}: {ours.images_per_s / bv.images_per_s:.2f}x images/s, "
                f"{bv.cpu_ms_per_image / ours.cpu_ms_per_image:.2f}x less CPU per image"
            )
    limit, decode_1thread = ceiling["decode_and_crop_jpeg, tf.data all cores"], ceiling["decode_and_crop_jpeg, 1 thread"]
    print(
        f"{ours_name} runs at {100 * ours.images_per_s / limit.images_per_s:.0f}% of the measured decode_and_crop_jpeg ceiling "
        f"({limit.images_per_s:.1f} images/s)"
    )
    limit = ceiling[DECODE_RESIZE]
    print(
        f"{ours_name} runs at {100 * ours.images_per_s / limit.images_per_s:.0f}% of decode_and_crop_jpeg + resize to 224 "
        f"({limit.images_per_s:.1f} images/s, {limit.cpu_ms_per_image:.2f} CPU ms/image), the least work of this pp string with the pp ops' kernels"
    )
    # CPU time per image does not depend on what else runs on the machine; on idle CPUs the rate is about n_cpus / (CPU time per image).
    n_cpus = os.cpu_count()
    print(
        f"on {n_cpus} idle CPUs (from CPU time per image): ours about {n_cpus * 1e3 / ours.cpu_ms_per_image:.0f} images/s, "
        f"decode_and_crop_jpeg alone about {n_cpus * 1e3 / decode_1thread.cpu_ms_per_image:.0f};"
        f" decoding is {100 * decode_1thread.cpu_ms_per_image / ours.cpu_ms_per_image:.0f}% of our CPU time"
        " (the rest: resize to 224, flip, value_range, batching)"
    )


def main() -> None:
    parser = get_args_parser()
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)  # TF/absl may have configured the root logger already
    log.setLevel(logging.INFO)
    variants = [v for v in args.variants.split(",") if v] + ([args.measure_one] if args.measure_one else [])
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    timm_workers = [] if args.no_timm else [int(w) for w in args.timm_workers.split(",") if w]

    work_dpath = args.work_dir or tempfile.mkdtemp(prefix="bench_input_pipeline_")
    folder_dpath, data_dpath = os.path.join(work_dpath, "imagefolder"), os.path.join(work_dpath, "tfds")
    try:
        files, builder = prepare_data(folder_dpath, data_dpath, args.n_images, args.seed)
        n_per_epoch = len(files) // args.batch_size
        log.info(
            "batch %d, %d batches per epoch, %d timed batches after %d warm-up, %d CPUs",
            args.batch_size,
            n_per_epoch,
            args.n_batches,
            args.warmup_batches,
            os.cpu_count(),
        )
        if args.measure_one:  # a worker of measure_ours
            print(json.dumps(dataclasses.asdict(measure(make_ours(builder, args.batch_size, args.measure_one), args.n_batches, args.warmup_batches))))
            return
        results = measure_rounds(args, builder, work_dpath, variants, timm_workers)
        ceiling = get_decode_ceiling(files, args.ceiling_seconds, args.seed)
        # Best wall rate and lowest CPU cost over the rounds, each on its own: other jobs on the machine only ever slow a measurement down.
        best = {k: Measurement(max(m.images_per_s for m in ms), min(m.cpu_ms_per_image for m in ms), ms[0].n_images) for k, ms in results.items()}
        print_report(args, len(files), best, ceiling, f"ours {variants[0]}")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dpath, ignore_errors=True)


if __name__ == "__main__":
    main()
