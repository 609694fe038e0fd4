"""Front door for data: `build_data(args, runtime)` -> host batches for this process only.

Image data comes from TFDS through big_vision pp strings (`--data_set digits` is the embedded,
offline default; `--data_set tfds --tfds_name NAME` reads any prepared TFDS dataset from
`--tfds_data_dir`, local or gs://). Cell-set data comes from `.h5ad` files (`--data_set h5ad`).
"""

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from utils import mixup as mixup_lib

if TYPE_CHECKING:
    from utils.cell_sets import CellSetData

log = logging.getLogger(__name__)

DATA_SETS = ("digits", "tfds", "h5ad")
DIGITS_NAME = "sklearn_digits"
DIGITS_PP_TRAIN = 'decode|resize(32)|value_range(-1, 1)|keep("image", "label")'
DIGITS_PP_EVAL = 'decode|resize(32)|value_range(-1, 1)|keep("image", "label")'
# Same recipe shape as big_vision's ImageNet configs.
IMAGENET_PP_TRAIN = 'decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)|keep("image", "label")'
IMAGENET_PP_EVAL = 'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|keep("image", "label")'
# The embedded cell-set dataset: a seeded simulated screen (tools/simulate_h5ad.py), written on first use when `--h5ad_path` names this path (relative to the working directory, like `--output_dir`).
SIM_H5AD_FPATH = os.path.join("data", "sim_vcc.h5ad")
# 3 cell lines, 48 knock-downs that each move their target and 24 other genes of a 256-gene panel at ~2000 UMIs per cell; effects are shared by the cell lines up to a per-line scale (log-normal, sd 0.3).
SIM_H5AD_KWARGS = {"n_cells": 60_000, "n_genes": 256, "n_contexts": 3, "n_perts": 48, "genes_per_effect": 24, "context_effect_sd": 0.3, "umis_per_cell": 2000, "seed": 0}
# Held-out perturbations are what the cell metrics are computed on: without --eval_perts or --eval_frac, this seeded fraction is held out.
DEFAULT_EVAL_FRAC = 0.2

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class Data:
    """What the engine needs from a dataset: epochs of train batches and one pass of eval batches."""

    kind: str  # "image" | "cellset"
    steps_per_epoch: int
    n_eval_batches: int
    n_eval_examples: int
    make_train_batches: Callable[[int, int], Iterator[Batch]]  # (epoch, start_step) -> batches
    make_eval_batches: Callable[[], Iterator[Batch]]
    num_classes: int = 0
    info: dict = dataclasses.field(default_factory=dict)
    cells: "CellSetData | None" = None  # kind "cellset": genes, perturbation and context names, the training-perturbation mean
    image_shape: tuple[int, ...] | None = None  # kind "image": one train image as the model sees it (c, h, w), for the start-up check of the model's input size

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        return self.make_train_batches(epoch, start_step)

    def eval_batches(self) -> Iterator[Batch]:
        return self.make_eval_batches()


def get_default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def prepare_digits(data_dpath: str) -> None:
    """Build the embedded digits dataset into `data_dpath` if it is not there yet (about a second)."""
    import tensorflow_datasets as tfds

    from big_vision import digits  # noqa: F401  (registers the builder)

    builder = tfds.builder(DIGITS_NAME, data_dir=data_dpath)
    if not builder.is_prepared():
        log.info("preparing the embedded digits dataset in %s", data_dpath)
        builder.download_and_prepare()


def check_num_classes(flag_value: int | None, builder, train_spec: dict, pp_train: str) -> int:
    """The class count of the model head: the dataset's label feature (or the pp string's one-hot width), which `--num_classes` may raise but never lower.

    A head smaller than the labels trains on garbage: cross-entropy indexes past the logits (an IndexError on CPU, silently meaningless metrics on XLA).
    """
    feature = builder.info.features["label"] if "label" in builder.info.features else None
    data_classes = getattr(feature, "num_classes", None)
    if "labels" in train_spec and train_spec["labels"].shape.rank == 2:
        width = train_spec["labels"].shape[-1]
        if data_classes is not None and width is not None and width != data_classes:
            log.warning("train pp %r one-hot encodes %d classes but the dataset's label feature has %d", pp_train, width, data_classes)
        data_classes = width
        if flag_value is not None and width is not None and flag_value != width:
            raise ValueError(
                f"--num_classes {flag_value} does not match the {width}-wide one-hot labels of the train pp string {pp_train!r}; make them agree (onehot({flag_value}, ...) or --num_classes {width})"
            )
    if data_classes is None:
        if flag_value is None:
            raise ValueError(f"cannot tell the number of classes of {builder.info.full_name} (no ClassLabel feature 'label'); pass --num_classes")
        return flag_value
    if flag_value is not None and flag_value < data_classes:
        raise ValueError(
            f"--num_classes {flag_value} is smaller than the {data_classes} classes of {builder.info.full_name}; labels >= {flag_value} would index past the model head. Drop --num_classes (default: from the dataset) or pass >= {data_classes}"
        )
    return flag_value or data_classes


def _get_image_shape(train_spec: dict) -> tuple[int, ...] | None:
    """(c, h, w) of one train image (NHWC in tf.data, NCHW in torch); None when the pp string leaves the size open."""
    if "image" not in train_spec or train_spec["image"].shape.rank != 4:
        return None
    _, h, w, c = train_spec["image"].shape.as_list()
    return None if None in (h, w, c) else (c, h, w)


def _build_tfds(args: argparse.Namespace, process_index: int, process_count: int) -> Data:
    from big_vision import input_pipeline as ip

    name = DIGITS_NAME if args.data_set == "digits" else args.tfds_name
    if not name:
        raise ValueError("--data_set tfds needs --tfds_name (e.g. imagenet2012, cifar10)")
    data_dpath = args.tfds_data_dir or get_default_data_dir()
    if args.data_set == "digits":
        os.makedirs(data_dpath, exist_ok=True)
        prepare_digits(data_dpath)
    builder = ip.make_builder(name, data_dpath)
    train_split = ip.get_split(builder, args.tfds_train_split)
    eval_split = ip.get_split(builder, args.tfds_eval_split)
    pp_train = args.big_vision_pp_train or (DIGITS_PP_TRAIN if args.data_set == "digits" else IMAGENET_PP_TRAIN)
    pp_eval = args.big_vision_pp_eval or (DIGITS_PP_EVAL if args.data_set == "digits" else IMAGENET_PP_EVAL)
    batch_per_process = args.batch_size // process_count
    steps_per_epoch = ip.get_train_steps_per_epoch(builder, train_split, batch_per_process, process_count)
    common = dict(
        process_index=process_index,
        process_count=process_count,
        skip_decode=args.tfds_skip_decode,
        prefetch=args.tfds_prefetch,
        num_parallel_calls=args.tfds_num_parallel_calls,
        private_threadpool_size=args.tfds_private_threadpool_size,
    )
    train_kw = dict(seed=args.seed, shuffle_buffer=args.tfds_shuffle_buffer, cache_raw=args.tfds_cache_raw, deterministic=args.tfds_deterministic, **common)
    # Build both pipelines once up front: a bad pp string or split fails here, before any compile.
    eval_ds, n_eval_batches = ip.make_eval_dataset(builder, eval_split, pp_eval, args.eval_batch_size // process_count, cache=args.tfds_cache_eval, **common)
    train_spec = ip.make_train_dataset(builder, train_split, pp_train, batch_per_process, **train_kw).element_spec
    num_classes = check_num_classes(args.num_classes, builder, train_spec, pp_train)
    mixup = mixup_lib.make_mixup(args, num_classes, batch_per_process)
    if mixup is not None:
        log.info("train batches mixed on the host: %s", mixup)
    if mixup is not None and ("label" not in train_spec or train_spec["label"].shape.rank != 1):
        raise ValueError(f"--mixup/--cutmix mix int class labels under the key 'label'; train pp {pp_train!r} gives {sorted(train_spec)} (drop its onehot: mixing makes the soft targets)")

    def train_batches(epoch: int, start_step: int) -> Iterator[Batch]:
        ds = ip.make_train_dataset(builder, train_split, pp_train, batch_per_process, epoch=epoch, start_step=start_step, **train_kw)
        batches = ip.iterate_torch(ds, source=f"{builder.info.full_name} split {train_split!r} in {builder.data_dir}")
        # Mixed on the host, before the device transfer: the device sees fixed shapes whatever was drawn (see utils/mixup.py).
        return batches if mixup is None else mixup_lib.mix_batches(batches, mixup, args.seed, epoch, start_step)

    return Data(
        kind="image",
        steps_per_epoch=steps_per_epoch,
        n_eval_batches=n_eval_batches,
        n_eval_examples=ip.get_num_examples(builder, eval_split),
        make_train_batches=train_batches,
        make_eval_batches=lambda: ip.iterate_torch(eval_ds, source=f"{builder.info.full_name} split {eval_split!r} in {builder.data_dir}"),
        num_classes=num_classes,
        image_shape=_get_image_shape(train_spec),
        info={"name": builder.info.full_name, "train_split": train_split, "eval_split": eval_split, "pp_train": pp_train, "pp_eval": pp_eval, "data_dir": data_dpath},
    )


def _get_sim_params(fpath: str) -> dict:
    """The simulation parameters a simulated file records in `uns/simulation` (empty if none)."""
    import h5py

    with h5py.File(fpath, "r") as fd:
        group = fd.get("uns/simulation")
        return {} if group is None else {k: group[k][()].item() for k in group}


def prepare_sim_h5ad(fpath: str) -> None:
    """Write the embedded simulated screen to `fpath` unless it is there with the current parameters (a few seconds); atomic, so concurrent processes agree."""
    if os.path.isfile(fpath):
        recorded = _get_sim_params(fpath)
        if not recorded:
            raise ValueError(f"{fpath} is the path of the embedded simulated screen but holds another file (no uns/simulation); move that file and pass its own path to --h5ad_path")
        stale = {k: recorded.get(k) for k, v in SIM_H5AD_KWARGS.items() if recorded.get(k) != v}
        if not stale:
            return
        log.info("%s was simulated with other parameters (%s); simulating it again", fpath, stale)
    from tools import simulate_h5ad

    log.info("generating the embedded simulated screen %s with tools/simulate_h5ad.py %s", fpath, SIM_H5AD_KWARGS)
    tmp_fpath = f"{fpath}.tmp{os.getpid()}"
    simulate_h5ad.simulate_h5ad(tmp_fpath, **SIM_H5AD_KWARGS)
    os.replace(tmp_fpath, fpath)


def _build_h5ad(args: argparse.Namespace, process_index: int, process_count: int) -> Data:
    from utils import cell_sets

    if not args.h5ad_path:
        raise ValueError(f"--data_set h5ad needs --h5ad_path FILE [FILE ...] (or {SIM_H5AD_FPATH}, the embedded simulated screen, generated on first use)")
    if args.eval_batch_size != args.batch_size:
        raise ValueError(f"cell sets are evaluated in batches of --batch_size ({args.batch_size}); drop --eval_batch_size ({args.eval_batch_size})")
    for fpath in args.h5ad_path:
        if os.path.normpath(fpath) == SIM_H5AD_FPATH:
            prepare_sim_h5ad(fpath)
    eval_frac = args.eval_frac
    if args.eval_perts is None and not eval_frac:
        eval_frac = DEFAULT_EVAL_FRAC
        log.info("no --eval_perts or --eval_frac: holding out a seeded --eval_frac %g of the perturbations (--seed %d) for the eval metrics", eval_frac, args.seed)
    cells = cell_sets.make_cellset_data(
        args.h5ad_path,
        pert_col=args.pert_col,
        context_col=args.context_col,
        control_label=args.control_label,
        cells_per_set=args.cells_per_set,
        batch_size=args.batch_size // process_count,
        transform=args.h5ad_transform,
        gene_vocab=args.gene_vocab,
        in_memory=args.h5ad_in_memory,
        eval_perts=args.eval_perts,
        eval_frac=eval_frac,
        eval_contexts=args.eval_contexts,
        seed=args.seed,
        process_index=process_index,
        process_count=process_count,
    )
    if cells.n_eval_sets == 0:
        where = "any context" if args.eval_contexts is None else f"--eval_contexts {args.eval_contexts}"
        raise ValueError(f"no held-out cells: perturbations {cells.eval_pert_names[:10]} have no cells in {where}; the eval metrics need held-out perturbations (--eval_perts FILE or --eval_frac F)")
    held_out = cells.eval_pert_names
    info = {
        "files": list(args.h5ad_path),
        "n_cells": sum(f.n_cells for f in cells.files),
        "n_genes": cells.n_genes,
        "n_perts": cells.n_perts - 1,
        "contexts": cells.context_names,
        "held_out_perts": held_out if len(held_out) <= 12 else [*held_out[:12], f"... {len(held_out)} in all"],
        "held_out_in": "every context" if cells.eval_context_names is None else cells.eval_context_names,
        "small_groups": {"train": cells.n_small_train_groups, "eval": cells.n_small_eval_groups, "control_pools": cells.n_small_control_pools},
    }
    return Data(
        kind="cellset",
        steps_per_epoch=cells.steps_per_epoch,
        n_eval_batches=cells.eval_steps,
        n_eval_examples=cells.n_eval_sets,
        make_train_batches=cells.train_batches,
        make_eval_batches=cells.eval_batches,
        info=info,
        cells=cells,
    )


def build_data(args: argparse.Namespace, process_index: int = 0, process_count: int = 1) -> Data:
    """The dataset named by `--data_set`, for process `process_index` of `process_count`."""
    if args.data_set in ("digits", "tfds"):
        return _build_tfds(args, process_index, process_count)
    if args.data_set == "h5ad":
        return _build_h5ad(args, process_index, process_count)
    raise ValueError(f"--data_set {args.data_set!r} is not one of {', '.join(DATA_SETS)}")
