"""Front door for data: `build_data(config, process_index, process_count)` -> host batches for this process only.

Image data comes from TFDS through big_vision pp strings (`--data_set digits` is the embedded,
offline default; `--data_set tfds --tfds_name NAME` reads any prepared TFDS dataset from
`--tfds_data_dir`, local or gs://). Cell-set data comes from `.h5ad` files (`--data_set h5ad`).

Image data is evaluated on `--tfds_eval_split` (metrics `eval/acc1`) or on several named eval sets (`--tfds_eval_splits val=validation
minival=train[99%:]`, each optionally from another prepared dataset, `--tfds_eval_datasets v2=imagenet_v2`, and with its own pp string,
`--tfds_eval_pp`): each one padded and masked to full batches and reported apart (`eval/val/acc1`, best values `val/acc1`).
"""

import contextlib
import dataclasses
import difflib
import io
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from big_vision import mixup as mixup_lib
from cells.sets import CellSetConfig
from utils import settings

if TYPE_CHECKING:
    from cells.sets import CellSetData

log = logging.getLogger(__name__)

DATA_SETS = ("digits", "photos", "tfds", "h5ad")  # the keys of DATA_BUILDERS
IMAGE_DATA_SETS = ("digits", "photos", "tfds")
DIGITS_NAME = "sklearn_digits"
# Embedded TFDS datasets, built offline from data that ships inside a package: --data_set -> (TFDS name, module that registers the builder).
EMBEDDED_DATA_SETS = {"digits": (DIGITS_NAME, "big_vision.digits"), "photos": ("local_photos", "big_vision.photos")}
DIGITS_PP_TRAIN = 'decode|resize(32)|value_range(-1, 1)|keep("image", "label")'
DIGITS_PP_EVAL = 'decode|resize(32)|value_range(-1, 1)|keep("image", "label")'
# Same recipe shape as big_vision's ImageNet configs.
IMAGENET_PP_TRAIN = 'decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)|keep("image", "label")'
IMAGENET_PP_EVAL = 'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|keep("image", "label")'

Batch = dict[str, torch.Tensor]
EVAL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")  # an eval set's name is part of its metric names (eval/NAME/acc1) and tensorboard tags


def parse_named(flag: str, items: list[str] | None, example: str) -> dict[str, str]:
    """`NAME=VALUE` entries of a flag -> {NAME: VALUE} (split at the first `=`); a ValueError naming the flag, the bad entry and the fix."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value.strip() or not EVAL_NAME_RE.fullmatch(name):
            raise ValueError(f"--{flag} {item!r} must be NAME=VALUE, NAME of letters, digits, '_', '.' or '-', e.g. {example}")
        if name in out:
            raise ValueError(f"--{flag} gives eval set {name!r} twice ({out[name]!r} and {value.strip()!r}); keep one")
        out[name] = value.strip()
    return out


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One named eval set: its split, its TFDS dataset (None: the train dataset) and pp string (None: --big_vision_pp_eval)."""

    split: str
    tfds_name: str | None = None
    pp: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The `data` flags: which dataset, how TFDS reads it, the pp strings, batch sizes, and the mixup and cell-set settings."""

    data_set: str = settings.setting("digits", choices=DATA_SETS)
    tfds_name: str | None = None
    tfds_data_dir: str | None = None
    tfds_train_split: str = "train"
    tfds_eval_split: str = "test"
    tfds_eval_splits: list[str] | None = None  # NAME=SPLIT entries: named eval sets, each reported as eval/NAME/...; they replace --tfds_eval_split
    tfds_eval_datasets: list[str] | None = None  # NAME=TFDS_NAME: that eval set reads another prepared dataset
    tfds_eval_pp: list[str] | None = None  # NAME=PP: that eval set's pp string
    tfds_shuffle_buffer: int = settings.setting(10_000, range=settings.AT_LEAST_ONE)
    tfds_cache_raw: bool = False
    tfds_cache_eval: bool = False
    tfds_prefetch: int = settings.setting(2, range=settings.NON_NEGATIVE)
    tfds_num_parallel_calls: int = -1  # -1: AUTOTUNE
    tfds_private_threadpool_size: int = settings.setting(0, range=settings.NON_NEGATIVE)
    tfds_skip_decode: bool = True
    tfds_deterministic: bool = True
    tfds_epochs_ahead: int = settings.setting(1, range=settings.NON_NEGATIVE)
    big_vision_pp_train: str | None = None
    big_vision_pp_eval: str | None = None
    batch_size: int = settings.setting(64, range=settings.POSITIVE)  # global, all processes together
    eval_batch_size: int | None = settings.setting(None, range=settings.POSITIVE)  # None: batch_size
    seed: int = settings.setting(0, range=settings.NON_NEGATIVE, hint=" (TF seeds are non-negative)")
    num_classes: int | None = settings.setting(None, range=settings.POSITIVE)
    max_steps_per_epoch: int | None = settings.setting(None, range=settings.POSITIVE)
    mixup: mixup_lib.MixupConfig = dataclasses.field(default_factory=mixup_lib.MixupConfig)
    cells: CellSetConfig = dataclasses.field(default_factory=CellSetConfig)

    def __post_init__(self):
        settings.check_fields(self)
        if self.eval_batch_size is None:
            object.__setattr__(self, "eval_batch_size", self.batch_size)
        if self.tfds_num_parallel_calls != -1 and self.tfds_num_parallel_calls < 1:
            raise ValueError(f"--tfds_num_parallel_calls must be -1 (AUTOTUNE) or >= 1, got {self.tfds_num_parallel_calls}")
        if self.mixup.enabled and self.data_set not in IMAGE_DATA_SETS:
            raise ValueError(f"--mixup/--cutmix mix images; --data_set {self.data_set} has none")
        if self.data_set != "h5ad" and self.cells.h5ad_path:
            raise ValueError(f"--h5ad_path given with --data_set {self.data_set}; add --data_set h5ad to train on cell sets")
        self.get_eval_specs()  # checks the named eval sets

    def get_eval_specs(self) -> dict[str, EvalSpec]:
        """The named eval sets of --tfds_eval_splits (with --tfds_eval_datasets and --tfds_eval_pp); {}: the one --tfds_eval_split."""
        splits = parse_named("tfds_eval_splits", self.tfds_eval_splits, "val=validation or minival=train[99%:]")
        extra = {}
        for flag, example in (("tfds_eval_datasets", "v2=imagenet_v2"), ("tfds_eval_pp", 'val=\'decode|resize(32)|keep("image", "label")\'')):
            extra[flag] = parse_named(flag, getattr(self, flag), example)
            for name in extra[flag]:
                if name in splits:
                    continue
                close = difflib.get_close_matches(name, list(splits), n=1)
                raise ValueError(
                    f"--{flag} names eval set {name!r}, which --tfds_eval_splits does not define ({', '.join(splits) or 'none'})"
                    + (f"; did you mean {close[0]!r}?" if close else f"; add {name}=SPLIT to --tfds_eval_splits")
                )
        if splits and self.data_set not in IMAGE_DATA_SETS:
            raise ValueError(f"--tfds_eval_splits names TFDS eval sets; --data_set {self.data_set} evaluates its own held-out data")
        return {name: EvalSpec(split, extra["tfds_eval_datasets"].get(name), extra["tfds_eval_pp"].get(name)) for name, split in splits.items()}

    @property
    def kind(self) -> str:
        """What the batches hold: "image" or "cellset"."""
        return "image" if self.data_set in IMAGE_DATA_SETS else "cellset"


@dataclasses.dataclass
class EvalSet:
    """One eval set of this process: a pass of padded, masked batches (the same count on every process) over `n_examples` examples of all processes."""

    n_batches: int
    n_examples: int
    make_batches: Callable[[], Iterator[Batch]]
    # The split position of this process's first example: its examples follow in read order, so batch k, row j is example first_index + k * b + j
    # (activation extraction's stable example index; padding rows, after the last example, are masked).
    first_index: int = 0

    def batches(self) -> Iterator[Batch]:
        return self.make_batches()


@dataclasses.dataclass
class Data:
    """What the engine needs from a dataset: epochs of train batches and one pass of eval batches.

    `eval_sets`: named eval sets (--tfds_eval_splits), each evaluated and reported apart; then the `*eval*` fields cover all of them together.
    """

    kind: str  # "image" | "cellset"
    steps_per_epoch: int
    n_eval_batches: int
    n_eval_examples: int
    make_train_batches: Callable[[int, int], Iterator[Batch]]  # (epoch, start_step) -> batches
    make_eval_batches: Callable[[], Iterator[Batch]]
    num_classes: int = 0
    info: dict = dataclasses.field(default_factory=dict)
    cells: "CellSetData | None" = None  # kind "cellset": genes, perturbation and context names, the training-perturbation mean
    # kind "image": one train image as the model sees it (c, h, w), for the start-up check of the model's input size
    image_shape: tuple[int, ...] | None = None
    # saved in checkpoints: what a model trained on this data needs to be used without it (a set model's genes, perturbations, ...)
    metadata: dict = dataclasses.field(default_factory=dict)
    eval_sets: dict[str, EvalSet] = dataclasses.field(default_factory=dict)
    # kind "image": the train split read like an eval set (in order, eval pp, padded and masked), for activation extraction; built on call
    make_train_eval_set: Callable[[], EvalSet] | None = None
    eval_first_index: int = 0  # the one unnamed eval set's `EvalSet.first_index`

    def get_eval_sets(self) -> dict[str, EvalSet]:
        """Name -> eval set; the one unnamed set ("") when no eval set is named (its metrics keep their plain names)."""
        return self.eval_sets or {"": EvalSet(self.n_eval_batches, self.n_eval_examples, self.make_eval_batches, first_index=self.eval_first_index)}

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        return self.make_train_batches(epoch, start_step)

    def eval_batches(self) -> Iterator[Batch]:
        return self.make_eval_batches()


def get_default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def prepare_embedded(data_dpath: str, data_set: str = "digits") -> None:
    """Build an embedded dataset (digits: about a second; photos: a few seconds) into `data_dpath` if it is not there yet."""
    import importlib

    import tensorflow_datasets as tfds

    name, module = EMBEDDED_DATA_SETS[data_set]
    importlib.import_module(module)  # registers the builder
    builder = tfds.builder(name, data_dir=data_dpath)
    if builder.is_prepared():
        return
    log.info(
        "preparing the embedded %s dataset in %s (built locally from data that ships with the installed packages: nothing is downloaded)", data_set, data_dpath
    )
    t0 = time.perf_counter()
    if not sys.stderr.isatty():
        tfds.disable_progress_bar()  # a redirected log would get tqdm's carriage returns and escape codes
    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared" (bold, with escape codes) to stdout itself: untrue here.
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare()
    log.info("prepared the embedded %s dataset in %.1f s", data_set, time.perf_counter() - t0)


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
                f"--num_classes {flag_value} does not match the {width}-wide one-hot labels of the train pp string {pp_train!r}; "
                f"make them agree (onehot({flag_value}, ...) or --num_classes {width})"
            )
    if data_classes is None:
        if flag_value is None:
            raise ValueError(f"cannot tell the number of classes of {builder.info.full_name} (no ClassLabel feature 'label'); pass --num_classes")
        return flag_value
    if flag_value is not None and flag_value < data_classes:
        raise ValueError(
            f"--num_classes {flag_value} is smaller than the {data_classes} classes of {builder.info.full_name}; labels >= {flag_value} would index past the "
            f"model head. Drop --num_classes (default: from the dataset) or pass >= {data_classes}"
        )
    return flag_value or data_classes


def _get_image_shape(train_spec: dict) -> tuple[int, ...] | None:
    """(c, h, w) of one train image (NHWC in tf.data, NCHW in torch); None when the pp string leaves the size open."""
    if "image" not in train_spec or train_spec["image"].shape.rank != 4:
        return None
    _, h, w, c = train_spec["image"].shape.as_list()
    return None if None in (h, w, c) else (c, h, w)


def _make_builder(config: DataConfig):
    """The TFDS builder of `--data_set digits` (prepared on first use) or `--tfds_name`, and its data dir."""
    from big_vision import input_pipeline as ip

    name = EMBEDDED_DATA_SETS[config.data_set][0] if config.data_set in EMBEDDED_DATA_SETS else config.tfds_name
    if not name:
        raise ValueError("--data_set tfds needs --tfds_name (e.g. imagenet2012, cifar10)")
    data_dpath = config.tfds_data_dir or get_default_data_dir()
    if config.data_set in EMBEDDED_DATA_SETS:
        os.makedirs(data_dpath, exist_ok=True)
        prepare_embedded(data_dpath, config.data_set)
    return ip.make_builder(name, data_dpath), data_dpath


def _make_mixup(config: DataConfig, num_classes: int, batch_per_process: int, train_spec: dict, pp_train: str):
    """The host-side Mixup of the train batches (None when off); it mixes int class labels under `label` or one-hot `labels`."""
    mixup = mixup_lib.make_mixup(config.mixup, num_classes, batch_per_process)
    if mixup is None:
        return None
    log.info("train batches mixed on the host: %s", mixup)
    labels = train_spec.get("labels")
    if labels is not None and labels.shape.rank == 2 and labels.shape[-1] == num_classes:
        return mixup  # pp onehot labels (big_vision's configs): mixed as they are
    if "label" not in train_spec or train_spec["label"].shape.rank != 1:
        raise ValueError(
            f"--mixup/--cutmix mix int class labels under 'label' or one-hot 'labels' of the head's {num_classes} classes; train pp {pp_train!r} "
            f"gives {', '.join(f'{k} {v.shape}' for k, v in sorted(train_spec.items()))}"
        )
    return mixup


def _check_eval_classes(builder, name: str, num_classes: int) -> None:
    """An eval dataset's class labels must fit the model head (the train dataset's classes)."""
    feature = builder.info.features["label"] if "label" in builder.info.features else None
    n = getattr(feature, "num_classes", None)
    if n is not None and n > num_classes:
        raise ValueError(
            f"eval set {name!r}: {builder.info.full_name} has {n} classes but the model head has {num_classes}; "
            f"pass --num_classes {n} or map its labels in --tfds_eval_pp"
        )


def _make_eval_set(builder, split: str, pp_str: str, config: DataConfig, common: dict) -> EvalSet:
    """One eval set, built now: a bad split or pp string fails at start-up, before any compile."""
    from big_vision import input_pipeline as ip

    split = ip.get_split(builder, split)
    batch_per_process = config.eval_batch_size // common["process_count"]
    ds, n_batches = ip.make_eval_dataset(builder, split, pp_str, batch_per_process, cache=config.tfds_cache_eval, **common)
    source, shards = f"{builder.info.full_name} split {split!r} in {builder.data_dir}", ip.get_shards(builder, split)
    n_before = [ip.get_num_examples(builder, ip._process_split(split, i, common["process_count"], False)) for i in range(common["process_index"])]
    return EvalSet(
        n_batches,
        ip.get_num_examples(builder, split),
        lambda: ip.iterate_torch(ds, source=source, shards=shards, n_batches=n_batches, strings=True),
        first_index=sum(n_before),
    )


def _make_eval_sets(config: DataConfig, builder, data_dpath: str, pp_eval: str, num_classes: int, common: dict) -> tuple[dict[str, EvalSet], dict]:
    """The eval sets by name ("" for the one --tfds_eval_split) and what to log of them."""
    from big_vision import input_pipeline as ip

    specs = config.get_eval_specs()
    if not specs:
        split = ip.get_split(builder, config.tfds_eval_split)
        return {"": _make_eval_set(builder, split, pp_eval, config, common)}, {"eval_split": split, "pp_eval": pp_eval}
    if config.tfds_eval_split != DataConfig.tfds_eval_split:
        log.info("--tfds_eval_splits replaces --tfds_eval_split %r", config.tfds_eval_split)
    builders = {builder.info.name: builder}
    sets, info = {}, {}
    for name, spec in specs.items():
        if spec.tfds_name and spec.tfds_name not in builders:
            builders[spec.tfds_name] = ip.make_builder(spec.tfds_name, data_dpath)
        eval_builder = builders[spec.tfds_name] if spec.tfds_name else builder
        _check_eval_classes(eval_builder, name, num_classes)
        sets[name] = _make_eval_set(eval_builder, spec.split, spec.pp or pp_eval, config, common)
        info[name] = f"{eval_builder.info.full_name} {spec.split} ({sets[name].n_examples} examples, pp {spec.pp or pp_eval!r})"
    return sets, {"eval_sets": info}


def _make_train_batches(config: DataConfig, builder, split: str, pp_str: str, batch_size: int, steps_per_epoch: int, train_kw: dict, mixup):
    """(epoch, start_step) -> that epoch's torch batches, mixed when mixup is on."""
    from big_vision import input_pipeline as ip
    from big_vision import train_stream

    source = f"{builder.info.full_name} split {split!r} in {builder.data_dir}"
    # Every epoch from one pipeline while the engine reads them in order (big_vision/train_stream.py); the same batches as one per epoch.
    stream = train_stream.TrainStream(
        lambda epoch, step: train_stream.make_train_stream(
            builder, split, pp_str, batch_size, start_epoch=epoch, start_step=step, epochs_ahead=config.tfds_epochs_ahead, **train_kw
        ),
        steps_per_epoch,
        source=source,
        shards=ip.get_shards(builder, split),
    )

    def train_batches(epoch: int, start_step: int) -> Iterator[Batch]:
        batches = stream.epoch(epoch, start_step)
        # Mixed on the host, before the device transfer: the device sees fixed shapes whatever was drawn (see big_vision/mixup.py).
        return batches if mixup is None else mixup_lib.mix_batches(batches, mixup, config.seed, epoch, start_step)

    return train_batches


def _build_tfds(config: DataConfig, process_index: int, process_count: int) -> Data:
    from big_vision import input_pipeline as ip

    builder, data_dpath = _make_builder(config)
    train_split = ip.get_split(builder, config.tfds_train_split)
    pp_train = config.big_vision_pp_train or (DIGITS_PP_TRAIN if config.data_set == "digits" else IMAGENET_PP_TRAIN)
    pp_eval = config.big_vision_pp_eval or (DIGITS_PP_EVAL if config.data_set == "digits" else IMAGENET_PP_EVAL)
    batch_per_process = config.batch_size // process_count
    steps_per_epoch = ip.get_train_steps_per_epoch(builder, train_split, batch_per_process, process_count)
    common = dict(
        process_index=process_index,
        process_count=process_count,
        skip_decode=config.tfds_skip_decode,
        prefetch=config.tfds_prefetch,
        num_parallel_calls=config.tfds_num_parallel_calls,
        private_threadpool_size=config.tfds_private_threadpool_size,
    )
    # One cached dataset for every epoch: each record is read once per process (see big_vision/input_pipeline.py).
    raw = None
    if config.tfds_cache_raw:
        raw = ip.make_raw_cache(
            builder, train_split, seed=config.seed, process_index=process_index, process_count=process_count, skip_decode=config.tfds_skip_decode
        )
    train_kw = dict(seed=config.seed, shuffle_buffer=config.tfds_shuffle_buffer, raw=raw, deterministic=config.tfds_deterministic, **common)
    # Build the pipelines up front: a bad pp string or split fails here, before any compile.
    train_spec = ip.make_train_dataset(builder, train_split, pp_train, batch_per_process, **train_kw).element_spec
    num_classes = check_num_classes(config.num_classes, builder, train_spec, pp_train)
    mixup = _make_mixup(config, num_classes, batch_per_process, train_spec, pp_train)
    eval_sets, eval_info = _make_eval_sets(config, builder, data_dpath, pp_eval, num_classes, common)
    strings = sorted(k for k, spec in train_spec.items() if spec.dtype.name == "string")
    if strings:
        log.info("train batches hold tensors only: the string features %s of train pp %r are dropped", strings, pp_train)

    train_batches = _make_train_batches(config, builder, train_split, pp_train, batch_per_process, steps_per_epoch, train_kw, mixup)

    return Data(
        kind="image",
        steps_per_epoch=steps_per_epoch,
        n_eval_batches=sum(s.n_batches for s in eval_sets.values()),
        n_eval_examples=sum(s.n_examples for s in eval_sets.values()),
        make_train_batches=train_batches,
        make_eval_batches=lambda: itertools.chain.from_iterable(s.batches() for s in eval_sets.values()),
        eval_sets={name: s for name, s in eval_sets.items() if name},
        num_classes=num_classes,
        image_shape=_get_image_shape(train_spec),
        make_train_eval_set=lambda: _make_eval_set(builder, train_split, pp_eval, config, common),
        eval_first_index=eval_sets[""].first_index if "" in eval_sets else 0,
        info={"name": builder.info.full_name, "train_split": train_split, **eval_info, "pp_train": pp_train, "data_dir": data_dpath},
    )


def _build_h5ad(config: DataConfig, process_index: int, process_count: int) -> Data:
    from cells import sets as cell_sets
    from cells import simulate

    cells_config = config.cells
    if not cells_config.h5ad_path:
        raise ValueError(
            f"--data_set h5ad needs --h5ad_path FILE [FILE ...] (or {simulate.EMBEDDED_FPATH}, the embedded simulated screen, generated on first use)"
        )
    if config.eval_batch_size != config.batch_size:
        raise ValueError(f"cell sets are evaluated in batches of --batch_size ({config.batch_size}); drop --eval_batch_size ({config.eval_batch_size})")
    for fpath in cells_config.h5ad_path:
        if os.path.normpath(fpath) == simulate.EMBEDDED_FPATH:
            simulate.prepare_embedded(fpath)
    cells = cell_sets.make_cellset_data(
        cells_config.h5ad_path,
        pert_col=cells_config.pert_col,
        context_col=cells_config.context_col,
        control_label=cells_config.control_label,
        cells_per_set=cells_config.cells_per_set,
        batch_size=config.batch_size // process_count,
        transform=cells_config.h5ad_transform,
        gene_vocab=cells_config.gene_vocab,
        in_memory=cells_config.h5ad_in_memory,
        matrix=cells_config.h5ad_matrix,
        target_sum=cells_config.h5ad_target_sum,
        eval_perts=cells_config.eval_perts,
        eval_frac=cells_config.get_eval_frac(config.seed),
        eval_contexts=cells_config.eval_contexts,
        seed=config.seed,
        process_index=process_index,
        process_count=process_count,
    )
    if cells.n_eval_sets == 0:
        where = "any context" if cells_config.eval_contexts is None else f"--eval_contexts {cells_config.eval_contexts}"
        raise ValueError(
            f"no held-out cells: perturbations {cells.eval_pert_names[:10]} have no cells in {where}; the eval metrics need held-out perturbations "
            "(--eval_perts FILE or --eval_frac F)"
        )
    return Data(
        kind="cellset",
        steps_per_epoch=cells.steps_per_epoch,
        n_eval_batches=cells.eval_steps,
        n_eval_examples=cells.n_eval_sets,
        make_train_batches=cells.train_batches,
        make_eval_batches=cells.eval_batches,
        info=_describe_cells(cells, cells_config.h5ad_path),
        cells=cells,
        metadata=cells.describe_vocabulary(),
    )


def _describe_cells(cells: "CellSetData", fpaths: list[str]) -> dict:
    held_out = cells.eval_pert_names
    return {
        "files": list(fpaths),
        "n_cells": sum(f.n_cells for f in cells.files),
        "n_genes": cells.n_genes,
        "n_perts": cells.n_perts - 1,
        "contexts": cells.context_names,
        "held_out_perts": held_out if len(held_out) <= 12 else [*held_out[:12], f"... {len(held_out)} in all"],
        "held_out_in": "every context" if cells.eval_context_names is None else cells.eval_context_names,
        "small_groups": {"train": cells.n_small_train_groups, "eval": cells.n_small_eval_groups, "control_pools": cells.n_small_control_pools},
    }


# --data_set NAME -> the builder of its batches for process i of n.
DATA_BUILDERS: dict[str, Callable[[DataConfig, int, int], Data]] = {"digits": _build_tfds, "photos": _build_tfds, "tfds": _build_tfds, "h5ad": _build_h5ad}
assert tuple(DATA_BUILDERS) == DATA_SETS


def build_data(config: DataConfig, process_index: int = 0, process_count: int = 1) -> Data:
    """The dataset named by `--data_set`, for process `process_index` of `process_count`; at most `--max_steps_per_epoch` steps per epoch."""
    settings.check_choice("data_set", config.data_set, tuple(DATA_BUILDERS))
    data = DATA_BUILDERS[config.data_set](config, process_index, process_count)
    if config.max_steps_per_epoch and config.max_steps_per_epoch < data.steps_per_epoch:
        if config.tfds_cache_raw and data.kind == "image":
            log.warning(
                "--tfds_cache_raw: epochs stop after --max_steps_per_epoch %d of %d steps, so no pass reads the split to its end and tf.data keeps no cache: "
                "every epoch reads its records again",
                config.max_steps_per_epoch,
                data.steps_per_epoch,
            )
        data.steps_per_epoch = config.max_steps_per_epoch
    return data
