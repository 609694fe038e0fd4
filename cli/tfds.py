"""Flags: TFDS input pipelines and big_vision pp strings (--data_set digits | photos | tfds)."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data / TFDS")
    g.add_argument("--data_set", default="digits", help="digits (embedded, offline) | photos (embedded ImageNet-like JPEGs, offline) | tfds | h5ad")
    g.add_argument("--tfds_name", default=None, help="TFDS dataset name, e.g. imagenet2012 (with --data_set tfds)")
    g.add_argument("--tfds_data_dir", default=None, help="prepared TFDS data dir, local or gs:// (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    g.add_argument("--tfds_train_split", default="train")
    g.add_argument("--tfds_eval_split", default="test", help="e.g. validation for imagenet2012")
    g.add_argument(
        "--tfds_eval_splits",
        nargs="+",
        default=None,
        metavar="NAME=SPLIT",
        help="several named eval sets instead of --tfds_eval_split, each padded to full batches and reported apart as eval/NAME/acc1 "
        "(logs, metrics.jsonl, tensorboard, best values): e.g. minival=train[99%%:] val=validation; a recipe gives a YAML list",
    )
    g.add_argument(
        "--tfds_eval_datasets",
        nargs="+",
        default=None,
        metavar="NAME=TFDS_NAME",
        help="eval set NAME reads another TFDS dataset prepared in --tfds_data_dir, e.g. v2=imagenet_v2 (default: the train dataset)",
    )
    g.add_argument("--tfds_eval_pp", nargs="+", default=None, metavar="NAME=PP", help="eval set NAME's pp string (default: --big_vision_pp_eval)")
    g.add_argument("--tfds_shuffle_buffer", type=int, default=10_000)
    g.add_argument(
        "--tfds_cache_raw",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep this process's encoded train examples in RAM after the first full pass: each record is read once",
    )
    g.add_argument("--tfds_cache_eval", action=argparse.BooleanOptionalAction, default=False, help="cache preprocessed eval examples in RAM")
    g.add_argument("--tfds_prefetch", type=int, default=2)
    g.add_argument("--tfds_num_parallel_calls", type=int, default=-1, help="-1 = AUTOTUNE")
    g.add_argument("--tfds_private_threadpool_size", type=int, default=0, help="0 = TF default")
    g.add_argument(
        "--tfds_skip_decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave images encoded for the pp string to decode (needed by decode_jpeg_and_inception_crop)",
    )
    g.add_argument(
        "--tfds_deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="seeded train batch order (exact resume); off: the parallel map hands out examples as they finish",
    )
    g.add_argument(
        "--tfds_epochs_ahead",
        type=int,
        default=1,
        help="train epochs whose pipelines start while the current one runs (shuffle buffer filled, first batches made), so no epoch starts "
        "empty; each holds its own shuffle buffer in RAM; 0: one epoch's pipeline at a time",
    )
    g.add_argument("--big_vision_pp_train", default=None, help="train pp string (default: the dataset's)")
    g.add_argument("--big_vision_pp_eval", default=None, help="eval pp string (default: the dataset's)")
