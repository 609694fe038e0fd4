"""Look at what the model sees: preprocessed TFDS examples, their value ranges, the input rate, and a picture grid.

Usage:
  python -m tools.test_tfds_loader [--data_dir DIR] [--dataset NAME] [--split train] [--num_samples 8] [--pp 'PP STRING'] \\
      [--batch_size 64] [--time_it --seconds 10] [--save_grid out.png]

The examples come from the train pipeline that training uses (`big_vision.input_pipeline.make_train_dataset`: shuffled with `--seed`,
preprocessed with the pp string). The default dataset is the embedded `sklearn_digits`, prepared into `--data_dir` on first use; its pp
string defaults to the one training uses, and any other dataset defaults to the ImageNet train pp string.

`--time_it` runs the same pipeline with `--batch_size` through `iterate_torch` (the torch hand-off included) for a warm-up of
`--warmup_seconds`, then counts images over a window of `--seconds`.

`--save_grid` writes a PNG: one tile per sample, `--grid_cols` per row, each image scaled up by an integer factor to at least 96 px on its
longer side (nearest neighbour, so pixels stay visible), with its label under it. Float images are mapped back to 0..255: [-1, 1] and [0, 1]
ranges exactly, any other range by the batch's min and max.

Errors in the inputs (missing data dir, unknown dataset, bad split, unknown pp op or bad op argument, a pp string that fails on the data)
print one line and exit with status 2.
"""

import argparse
import math
import os
import re
import sys
import time

import numpy as np

from cli.help import ArgumentParser

MIN_TILE_PX = 96
CAPTION_PX = 14
PAD_PX = 4


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("python -m tools.test_tfds_loader", description=__doc__)
    p.add_argument("--data_dir", default=None, help="prepared TFDS data dir, local or gs:// (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--dataset", default=None, help="TFDS name (default: the embedded digits dataset, datasets.DIGITS_NAME, prepared on first use)")
    p.add_argument("--split", default="train", help="TFDS split, slices allowed: train[:1%%]")
    p.add_argument("--pp", default=None, help="pp string (default: the training one for digits, else the ImageNet train string)")
    p.add_argument("--num_samples", type=int, default=8, help="examples to describe and draw")
    p.add_argument("--batch_size", type=int, default=64, help="batch size of the --time_it pipeline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle_buffer", type=int, default=10_000)
    p.add_argument("--time_it", action="store_true", help="measure images/s of the train pipeline")
    p.add_argument("--seconds", type=float, default=10.0, help="timed window of --time_it")
    p.add_argument("--warmup_seconds", type=float, default=2.0, help="untimed warm-up before the window")
    p.add_argument("--save_grid", default=None, metavar="PNG", help="write a picture grid of the samples here")
    p.add_argument("--grid_cols", type=int, default=8)
    return p


def get_default_pp(dataset: str) -> str:
    import datasets

    return datasets.DIGITS_PP_TRAIN if dataset == datasets.DIGITS_NAME else datasets.IMAGENET_PP_TRAIN


def describe(batch: dict[str, np.ndarray]) -> list[str]:
    """One line per key: per-example shape, dtype, and min/max/mean over the batch for numbers."""
    lines = []
    for key, x in batch.items():
        line = f"  {key:<12} shape {tuple(x.shape[1:])!s:<16} dtype {x.dtype!s:<8}"
        if np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_:
            xf = x.astype(np.float64)
            line += f" min {xf.min():.4g}  max {xf.max():.4g}  mean {xf.mean():.4g}"
        lines.append(line)
    return lines


def get_display_uint8(images_bhwc: np.ndarray) -> tuple[np.ndarray, str]:
    """Images as uint8 RGB for display, and which mapping was used."""
    if images_bhwc.dtype == np.uint8:
        out, how = images_bhwc, "uint8 as is"
    else:
        x = images_bhwc.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo >= -1.0 and hi <= 1.0 and lo < 0.0:
            out, how = (x + 1.0) * 127.5, "[-1, 1] -> [0, 255]"
        elif lo >= 0.0 and hi <= 1.0:
            out, how = x * 255.0, "[0, 1] -> [0, 255]"
        elif lo >= 0.0 and hi <= 255.0:
            out, how = x, "[0, 255] as is"
        else:
            out, how = (x - lo) / max(hi - lo, 1e-12) * 255.0, f"batch [{lo:.3g}, {hi:.3g}] -> [0, 255]"
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    assert out.ndim == 4 and out.shape[-1] == 3, f"expected [b, h, w, 1 or 3] images, got {images_bhwc.shape}"
    return out, how


def get_captions(batch: dict[str, np.ndarray], label_names: list[str] | None) -> list[str]:
    """`label` as an int (with its class name when it is not just the number), or the argmax of `labels`."""
    n = len(next(iter(batch.values())))
    if "label" in batch:
        idx = [int(i) for i in batch["label"].reshape(n, -1)[:, 0]]
    elif "labels" in batch:
        idx = [int(i) for i in batch["labels"].reshape(n, -1).argmax(axis=1)]
    else:
        return [""] * n
    names = [label_names[i] if label_names and 0 <= i < len(label_names) else "" for i in idx]
    return [f"{i}" if not name or name == str(i) else f"{i} {name}" for i, name in zip(idx, names, strict=True)]


def save_grid(images_bhwc: np.ndarray, captions: list[str], cols: int, out_fpath: str) -> tuple[int, int]:
    """Tile the images (integer upscale to >= MIN_TILE_PX, caption strip below each) into one PNG; returns its (width, height)."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images_bhwc.shape
    scale = max(1, math.ceil(MIN_TILE_PX / max(h, w)))
    tile_w, tile_h = w * scale, h * scale + CAPTION_PX
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * (tile_w + PAD_PX) + PAD_PX, rows * (tile_h + PAD_PX) + PAD_PX), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        x0 = PAD_PX + (i % cols) * (tile_w + PAD_PX)
        y0 = PAD_PX + (i // cols) * (tile_h + PAD_PX)
        tile = Image.fromarray(images_bhwc[i]).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (x0, y0))
        draw.text((x0 + 2, y0 + h * scale + 1), captions[i], fill=(255, 255, 255))
    os.makedirs(os.path.dirname(os.path.abspath(out_fpath)), exist_ok=True)
    grid.save(out_fpath)
    return grid.size


def get_images_per_s(make_ds, batch_size: int, seconds: float, warmup_seconds: float) -> tuple[float, int]:
    """Images/s of `iterate_torch(make_ds(epoch))` over epochs, after a warm-up; also the number of images timed."""
    from big_vision import input_pipeline as ip

    def batches():
        epoch = 0
        while True:
            yield from ip.iterate_torch(make_ds(epoch))
            epoch += 1

    it = batches()
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_seconds:
        next(it)
    n_images = 0
    start = time.perf_counter()
    while True:
        batch = next(it)
        n_images += batch["image"].shape[0] if "image" in batch else batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n_images / elapsed, n_images


def run(args: argparse.Namespace) -> None:
    import datasets
    from big_vision import input_pipeline as ip
    from utils.tf_import import tf

    data_dpath = args.data_dir or datasets.get_default_data_dir()
    args.dataset = args.dataset or datasets.DIGITS_NAME
    if args.dataset == datasets.DIGITS_NAME:
        os.makedirs(data_dpath, exist_ok=True)
        datasets.prepare_embedded(data_dpath)
    elif not tf.io.gfile.exists(data_dpath):
        raise FileNotFoundError(
            f"--data_dir {data_dpath!r} does not exist; point it at the directory that holds prepared TFDS datasets (e.g. gs://bucket/tensorflow_datasets)"
        )
    builder = ip.make_builder(args.dataset, data_dpath)
    split = ip.get_split(builder, args.split)
    pp_str = args.pp if args.pp is not None else get_default_pp(args.dataset)
    n_examples = ip.get_num_examples(builder, split)
    if args.num_samples > n_examples:
        raise ValueError(f"--num_samples {args.num_samples} is more than the {n_examples} examples in split {split!r}")

    def make_ds(batch_size: int, epoch: int = 0):
        return ip.make_train_dataset(builder, split, pp_str, batch_size, epoch=epoch, seed=args.seed, shuffle_buffer=args.shuffle_buffer)

    batch = next(make_ds(args.num_samples).as_numpy_iterator())
    print(f"{builder.info.full_name} split {split!r} ({n_examples} examples) in {data_dpath}")
    print(f"pp: {pp_str}")
    print(f"{args.num_samples} preprocessed examples:")
    print("\n".join(describe(batch)))

    if args.save_grid:
        if "image" not in batch or batch["image"].ndim != 4:
            raise ValueError(f"--save_grid needs an 'image' key of shape [h, w, c] after pp; the pp output has {sorted(batch)}")
        images, how = get_display_uint8(batch["image"])
        label_feature = builder.info.features["label"] if "label" in builder.info.features else None
        label_names = getattr(label_feature, "names", None)
        width, height = save_grid(images, get_captions(batch, label_names), args.grid_cols, args.save_grid)
        print(f"grid: {args.save_grid} ({width}x{height} px, {how})")

    if args.time_it:
        if args.batch_size > n_examples:
            raise ValueError(f"--batch_size {args.batch_size} is more than the {n_examples} examples in split {split!r}")
        rate, n_images = get_images_per_s(lambda epoch: make_ds(args.batch_size, epoch), args.batch_size, args.seconds, args.warmup_seconds)
        print(
            f"input rate: {rate:.1f} images/s ({n_images} images in a {args.seconds:g} s window after {args.warmup_seconds:g} s warm-up, "
            f"batch {args.batch_size}, {os.cpu_count()} CPUs)"
        )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    for name in ("num_samples", "batch_size", "grid_cols"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    from utils.tf_import import tf  # torch_xla before TensorFlow

    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except tf.errors.OpError as e:  # the pp string does not fit the data (e.g. a JPEG op on PNG images)
        message = re.sub(r"^\{\{.*?\}\}\s*", "", e.message.splitlines()[0])  # drop TF's "{{function_node ...}}" prefix
        print(f"error: the pp string failed on the data: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
