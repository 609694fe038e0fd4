"""Train a backbone: `python main.py [--config recipe.yaml] [--flag value ...]`.

CLI -> config (YAML defaults, flags override) -> runtime -> data -> model/optimizer -> engine.
With no arguments it trains the default model on the embedded digits dataset on CPU.
"""

import argparse
import difflib
import logging
import os
import sys

import yaml

log = logging.getLogger("train")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("main.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML recipe; its keys are defaults for the flags below, which override it")
    p.add_argument("--list_models", default=None, nargs="?", const="", metavar="PATTERN", help="print model names (optionally matching PATTERN) and exit")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="small_cnn", help="timm model name or one registered in models/")
    g.add_argument("--num_classes", type=int, default=None, help="default: from the dataset")
    g.add_argument("--drop_rate", type=float, default=None)
    g.add_argument("--drop_path_rate", type=float, default=None)
    g.add_argument("--img_size", type=int, default=None, help="passed to models that take it (ViTs)")
    g.add_argument("--init_checkpoint", default=None, help="start from these weights (our checkpoint, timm state dict or .safetensors)")

    g = p.add_argument_group("data / TFDS")
    g.add_argument("--data_set", default="digits", help="digits (embedded, offline) | tfds | h5ad")
    g.add_argument("--tfds_name", default=None, help="TFDS dataset name, e.g. imagenet2012 (with --data_set tfds)")
    g.add_argument("--tfds_data_dir", default=None, help="prepared TFDS data dir, local or gs:// (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    g.add_argument("--tfds_train_split", default="train")
    g.add_argument("--tfds_eval_split", default="test", help="e.g. validation for imagenet2012")
    g.add_argument("--tfds_shuffle_buffer", type=int, default=10_000)
    g.add_argument("--tfds_cache_raw", action=argparse.BooleanOptionalAction, default=False, help="cache encoded train examples in RAM")
    g.add_argument("--tfds_cache_eval", action=argparse.BooleanOptionalAction, default=False, help="cache preprocessed eval examples in RAM")
    g.add_argument("--tfds_prefetch", type=int, default=2)
    g.add_argument("--tfds_num_parallel_calls", type=int, default=-1, help="-1 = AUTOTUNE")
    g.add_argument("--tfds_private_threadpool_size", type=int, default=0, help="0 = TF default")
    g.add_argument("--tfds_skip_decode", action=argparse.BooleanOptionalAction, default=True, help="leave images encoded for the pp string to decode (needed by decode_jpeg_and_inception_crop)")
    g.add_argument("--big_vision_pp_train", default=None, help="train pp string (default: the dataset's)")
    g.add_argument("--big_vision_pp_eval", default=None, help="eval pp string (default: the dataset's)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("--batch_size", type=int, default=64, help="global batch size (all processes together)")
    g.add_argument("--eval_batch_size", type=int, default=None, help="global eval batch size (default: --batch_size)")
    g.add_argument("--opt", default="adamw", help="any timm optimizer name (adamw, sgd, lamb, lion, ...)")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min_lr", type=float, default=1e-5)
    g.add_argument("--warmup_epochs", type=float, default=2.0)
    g.add_argument("--warmup_lr", type=float, default=1e-5)
    g.add_argument("--weight_decay", type=float, default=0.05)
    g.add_argument("--weight_decay_end", type=float, default=None, help="cosine WD schedule end value (default: constant WD)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--layer_decay", type=float, default=None)
    g.add_argument("--clip_grad", type=float, default=0.0, help="max global grad norm; 0 = no clipping")
    g.add_argument("--label_smoothing", type=float, default=0.0)

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | xla")
    g.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast on XLA and CUDA)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_steps_per_epoch", type=int, default=None, help="cap the steps per epoch (smoke runs)")

    g = p.add_argument_group("logging / checkpoints")
    g.add_argument("--output_dir", default="output/default", help="checkpoints, args.yaml, tensorboard events, metrics.jsonl")
    g.add_argument("--log_every", type=int, default=20, help="steps between progress lines")
    g.add_argument("--eval_every_epochs", type=int, default=5)
    g.add_argument("--save_every_epochs", type=int, default=5)
    g.add_argument("--save_every_steps", type=int, default=0, help="also checkpoint every N steps (0 = off)")
    g.add_argument("--keep_last", type=int, default=3, help="checkpoints to keep")
    g.add_argument("--resume", default="", help="'auto' (newest loadable checkpoint in --output_dir) or a checkpoint path")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    return p


def _check_type(parser: argparse.ArgumentParser, key: str, value, action: argparse.Action) -> None:
    if value is None:
        return
    if isinstance(action, argparse.BooleanOptionalAction) and not isinstance(value, bool):
        parser.error(f"config key {key!r} has value {value!r}; use true or false")
    if action.type is None:
        return
    try:
        action.type(value)
    except (TypeError, ValueError):
        parser.error(f"config key {key!r} has value {value!r}, which is not a valid {action.type.__name__}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Two stages: `--config` YAML becomes parser defaults (unknown keys are errors), then flags override."""
    parser = get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        if not os.path.isfile(known.config):
            parser.error(f"--config {known.config!r} does not exist")
        with open(known.config) as fd:
            cfg = yaml.safe_load(fd) or {}
        if not isinstance(cfg, dict):
            parser.error(f"--config {known.config!r} must hold a mapping of flag names to values")
        actions = {a.dest: a for a in parser._actions}
        for key, value in cfg.items():
            if key not in actions or key in ("help", "config"):
                close = difflib.get_close_matches(key, [k for k in actions if k not in ("help", "config")], n=1)
                parser.error(f"unknown key {key!r} in {known.config}" + (f"; did you mean {close[0]!r}?" if close else ""))
            _check_type(parser, key, value, actions[key])
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return args


def get_resolved_config(args: argparse.Namespace) -> dict:
    """The flags as a recipe: `python main.py --config output_dir/args.yaml` reruns the same config."""
    return {k: v for k, v in vars(args).items() if k not in ("config", "list_models")}


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop at start-up on values that would only fail (or silently mislead) later."""
    if args.list_models is not None:
        return
    positive = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "log_every": args.log_every}
    for name, value in positive.items():
        if value is None or value <= 0:
            parser.error(f"--{name} must be > 0, got {value}")
    if args.eval_batch_size is None:
        args.eval_batch_size = args.batch_size
    if args.eval_batch_size <= 0:
        parser.error(f"--eval_batch_size must be > 0, got {args.eval_batch_size}")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch <= 0:
        parser.error(f"--max_steps_per_epoch must be > 0, got {args.max_steps_per_epoch}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from utils.logging import setup_logging

    if args.list_models is not None:
        import models

        print("\n".join(models.list_models(args.list_models)))
        return {}
    # Runtime first: on XLA it imports torch_xla before anything imports TensorFlow.
    from utils.device import make_runtime

    runtime = make_runtime(args.device, args.precision)
    setup_logging(runtime.is_main)
    return run(args, runtime)


def run(args: argparse.Namespace, runtime) -> dict:
    """Wire data, model, optimizer and engine for this process, then train."""
    import torch

    import datasets
    import engine
    import models
    from optim_factory import Schedule, make_optimizer
    from tasks.classification import ClassificationTask
    from utils import checkpoint as ckpt
    from utils.logging import MetricLogger

    if args.batch_size % runtime.world_size or args.eval_batch_size % runtime.world_size:
        raise ValueError(f"--batch_size {args.batch_size} and --eval_batch_size {args.eval_batch_size} must divide by the {runtime.world_size} processes; pick a multiple of {runtime.world_size}")
    torch.manual_seed(args.seed)
    log.info("runtime: %s", runtime.describe())
    log.info("batch: %d global, %d per process", args.batch_size, args.batch_size // runtime.world_size)
    data = datasets.build_data(args, runtime.rank, runtime.world_size)
    if args.max_steps_per_epoch:
        data.steps_per_epoch = min(data.steps_per_epoch, args.max_steps_per_epoch)
    log.info("data: %s, %d steps per epoch, %d eval examples in %d batches", data.info, data.steps_per_epoch, data.n_eval_examples, data.n_eval_batches)

    num_classes = args.num_classes or data.num_classes
    model_kwargs = {"num_classes": num_classes, "drop_rate": args.drop_rate, "drop_path_rate": args.drop_path_rate, "img_size": args.img_size}
    model = models.create_model(args.model, **model_kwargs)
    if args.init_checkpoint:
        ckpt.load_model_weights(model, args.init_checkpoint, what="--init_checkpoint")
    model.to(runtime.device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters, %d classes", args.model, n_params / 1e6, num_classes)

    optimizer = make_optimizer(model, args.opt, args.lr, args.weight_decay, momentum=args.momentum, layer_decay=args.layer_decay)
    total_steps = args.epochs * data.steps_per_epoch
    schedule = Schedule(
        total_steps=total_steps,
        lr=args.lr,
        warmup_steps=int(args.warmup_epochs * data.steps_per_epoch),
        warmup_lr=args.warmup_lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        weight_decay_end=args.weight_decay_end,
    )
    task = ClassificationTask(runtime, label_smoothing=args.label_smoothing)

    if runtime.is_main and args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "args.yaml"), "w") as fd:
            yaml.safe_dump(get_resolved_config(args), fd, sort_keys=False)
    logger = MetricLogger(args.output_dir, runtime.is_main, total_steps, tensorboard=args.tensorboard)
    trainer = engine.Trainer(args, runtime, model, task, optimizer, schedule, data, logger, examples_per_step=args.batch_size)
    found = ckpt.find_resume(args.resume, args.output_dir)
    if found:
        fpath, state = found
        trainer.load_state_dict(state)
        log.info("resumed from %s at epoch %d, step %d", fpath, trainer.position.epoch, trainer.position.global_step)
    try:
        metrics = trainer.fit()
    finally:
        logger.close()
    summary = {**metrics, "compiles": runtime.compile_count(), "steps": trainer.position.global_step}
    if runtime.is_main:
        print("final: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
