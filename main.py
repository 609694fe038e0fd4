"""Train a backbone: `python main.py [--config recipe.yaml] [--flag value ...]`.

CLI -> config (YAML defaults, flags override) -> runtime -> data -> model/optimizer -> engine.
With no arguments it trains the default model on the embedded digits dataset on CPU.

Exit codes of `python main.py` (see `cli`):
  0    trained to the end
  1    a bug: any other exception, with its traceback
  2    bad input, printed as one `error: ...` line naming the value and the fix: argparse errors, any check at start-up (before the first train step: see `utils.errors.startup`), and bad data found while training (a corrupt record)
  3    the loss or gradient norm became nan or inf (`error: loss became nan or inf between steps a and b ...`); the last good checkpoint is kept
  4    writing to --output_dir failed during training (disk full, read-only, permissions): `error: ...` names the file; earlier checkpoints are intact
  130  SIGINT (Ctrl-C), 143 SIGTERM: 128 + the signal number. During training the step in flight finishes and a checkpoint is written; the `stopped: ...` line says how to resume (`--resume auto --output_dir ...`)
"""

import argparse
import difflib
import logging
import math
import os
import shlex
import signal
import sys

import yaml

from utils.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_OUTPUT_WRITE  # noqa: F401  (the CLI's exit codes, documented above)

# Before torch (libgomp reads it once): OpenMP workers that sleep instead of spinning. With the TF input threads (or any other process) on the same cores, spinning workers made a CPU train step 5x slower on 2 cores; sleeping ones cost nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("train")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage on errors: the full flag list is `--help`'s job, not every typo's."""

    def error(self, message: str):
        self.exit(2, f"usage: {self.prog} [--config recipe.yaml] [--flag value ...] (python {self.prog} --help lists the flags)\n{self.prog}: error: {message}\n")


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("main.py", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    g.add_argument("--tfds_deterministic", action=argparse.BooleanOptionalAction, default=True, help="seeded train batch order (exact resume); off: the parallel map hands out examples as they finish")
    g.add_argument("--big_vision_pp_train", default=None, help="train pp string (default: the dataset's)")
    g.add_argument("--big_vision_pp_eval", default=None, help="eval pp string (default: the dataset's)")

    g = p.add_argument_group(
        "h5ad / cell sets", "Perturbation screens in .h5ad files (--data_set h5ad): one example is a set of perturbed cells of one (context, perturbation) plus a matched set of control cells"
    )
    g.add_argument("--h5ad_path", nargs="+", default=None, metavar="PATH", help="one or more .h5ad files; data/sim_vcc.h5ad is the embedded simulated screen, generated on first use")
    g.add_argument("--pert_col", default="target_gene", help="obs column with the perturbation label")
    g.add_argument("--context_col", default="cell_line", help="obs column with the context (cell line)")
    g.add_argument("--control_label", default="non-targeting", help="perturbation label of the control cells")
    g.add_argument("--cells_per_set", type=int, default=64, help="cells in a perturbed set and in its control set")
    g.add_argument("--h5ad_transform", default="auto", help="auto | log1p (raw counts: normalize_total 1e4 + log1p) | none (X used as stored)")
    g.add_argument("--gene_vocab", default=None, help="text file, one gene (Ensembl id or symbol) per line: map every file onto this gene order")
    g.add_argument("--h5ad_in_memory", action=argparse.BooleanOptionalAction, default=False, help="load X into RAM once (compressed files)")
    g.add_argument("--eval_perts", default=None, help="text file of held-out perturbations, one per line")
    g.add_argument("--eval_frac", type=float, default=0.0, help="hold out this seeded fraction of the perturbations (0 and no --eval_perts: 0.2)")
    g.add_argument(
        "--eval_contexts",
        nargs="+",
        default=None,
        metavar="CONTEXT",
        help="hold the eval perturbations out in these contexts only; they train in the others (context transfer). Default: held out in every context (unseen perturbations)",
    )

    g = p.add_argument_group("MMD / set loss", "Per-set loss between predicted and observed cells (losses.make_set_loss)")
    g.add_argument("--set_loss", default="energy", help="energy | rbf | sinkhorn | mse (set means only)")
    g.add_argument("--mmd_estimator", default="biased", help="biased (V-statistic) | unbiased (U-statistic), for energy and rbf")
    g.add_argument("--mmd_sigmas", type=float, nargs="+", default=None, help="rbf bandwidths (default: median heuristic per set x 0.25..4)")
    g.add_argument("--sinkhorn_blur", type=float, default=0.05, help="sinkhorn blur (eps = blur^2)")
    g.add_argument("--sinkhorn_iters", type=int, default=50)
    g.add_argument("--set_loss_state_parity", action=argparse.BooleanOptionalAction, default=False, help="halve the biased energy distance (geomloss / STATE convention)")
    g.add_argument("--mean_mse_weight", type=float, default=0.0, help="add this weight x MSE between the set means (pseudobulks)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("--batch_size", type=int, default=64, help="global batch size (all processes together)")
    g.add_argument("--eval_batch_size", type=int, default=None, help="global eval batch size (default: --batch_size)")
    g.add_argument("--opt", default="adamw", help="any timm optimizer name (adamw, sgd, lamb, lion, ...)")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min_lr", type=float, default=1e-5)
    g.add_argument("--warmup_epochs", type=float, default=None, help="linear warm-up from --warmup_lr to --lr (default: 2 epochs, at most 20%% of --epochs)")
    g.add_argument("--warmup_lr", type=float, default=1e-5)
    g.add_argument("--weight_decay", type=float, default=0.05)
    g.add_argument("--weight_decay_end", type=float, default=None, help="cosine WD schedule end value (default: constant WD)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--layer_decay", type=float, default=None)
    g.add_argument("--clip_grad", type=float, default=0.0, help="max global grad norm; 0 = no clipping")
    g.add_argument("--label_smoothing", type=float, default=0.0)

    g = p.add_argument_group("augmentation", "Mixup/CutMix on the host batch before the device transfer (fixed shapes: `labels` float [b, n_classes]); --label_smoothing applies on top, once")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha; > 0 turns mixup on")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha; > 0 turns cutmix on")
    g.add_argument("--cutmix_minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"), help="cutmix box sides drawn in [MIN, MAX) x image side (turns cutmix on)")
    g.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixing a batch (or element, or pair)")
    g.add_argument("--mixup_switch_prob", type=float, default=0.5, help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--mixup_mode", default="batch", help="batch | pair | elem: one draw per batch, per pair (i, b-1-i), or per element")

    g = p.add_argument_group("distillation / model EMA")
    g.add_argument("--kd", action=argparse.BooleanOptionalAction, default=False, help="distil from a frozen teacher (needs --teacher_arch, --teacher_path, --distillation_type soft|hard)")
    g.add_argument("--distillation_type", default="none", help="none | soft (T^2 KL to the teacher's softened distribution) | hard (CE to the teacher's argmax)")
    g.add_argument("--teacher_arch", default=None, help="teacher model name (timm or models/)")
    g.add_argument("--teacher_path", default=None, help="teacher weights: our checkpoint-*.pt, a timm-style state dict or .safetensors")
    g.add_argument("--teacher_img_size", type=int, default=None, help="teacher img_size (default: the one stored in our checkpoint, else the model's)")
    g.add_argument("--teacher_dtype", default="fp32", help="fp32 | bf16 (teacher weights and forward in bf16: half the memory and faster on TPU)")
    g.add_argument("--kd_alpha", type=float, default=0.5, help="loss = (1 - alpha) * CE(labels) + alpha * KD")
    g.add_argument("--kd_temperature", type=float, default=1.0, help="softmax temperature T of the soft KD loss")
    g.add_argument("--kd_scaling", default="batchmean_t2", help="batchmean_t2 (KL summed over classes, batch mean, x T^2) | deit (DeiT's sum / numel: the same divided by the class count)")
    g.add_argument("--model_ema", action=argparse.BooleanOptionalAction, default=False, help="keep an EMA of the weights (updated inside the train step, saved as model_ema)")
    g.add_argument("--model_ema_decay", type=float, default=0.9998, help="EMA decay per step (the average spans about 1 / (1 - decay) steps)")
    g.add_argument("--model_ema_eval", action=argparse.BooleanOptionalAction, default=False, help="also evaluate the EMA weights (logged as eval_ema/*)")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | xla")
    g.add_argument("--parallel", default="auto", help="auto | none | spmd | fsdp | pjrt | ddp (auto: spmd on TPU, ddp under torchrun, else none)")
    g.add_argument("--fsdp", action="store_true", help="shorthand for --parallel fsdp (FSDPv2 over the SPMD mesh, for models that do not fit per chip)")
    g.add_argument("--xla_cache_dir", default=None, help="persistent XLA compile cache (pays on TPU)")
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


def _check_type(parser: argparse.ArgumentParser, key: str, value, action: argparse.Action):
    """A YAML value as the flag's own type would parse it (lists for nargs flags); an error line for anything else."""
    if value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            parser.error(f"config key {key!r} has value {value!r}; use true or false")
        return value
    if isinstance(value, dict | bool) and action.type is not None:
        parser.error(f"config key {key!r} has value {value!r}, which is not a valid {action.type.__name__}")
    if action.type is None:
        if isinstance(value, dict | list) and action.nargs in (None, "?"):
            parser.error(f"config key {key!r} has value {value!r}; expected a single value")
        return [str(v) for v in value] if isinstance(value, list) else (value if isinstance(value, str) else str(value))
    multi = action.nargs not in (None, "?")
    if multi != isinstance(value, list):
        parser.error(
            f"config key {key!r} has value {value!r}; expected "
            + (f"a list like [{', '.join(['...'] * (action.nargs if isinstance(action.nargs, int) else 1))}]" if multi else "a single value, not a list")
        )
    items = value if multi else [value]
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        parser.error(f"config key {key!r} has value {value!r}; expected a list of {action.nargs}")
    converted = []
    for item in items:
        if isinstance(item, bool | dict | list):
            parser.error(f"config key {key!r} has value {value!r}, which is not a valid {action.type.__name__}")
        try:
            converted.append(action.type(item))
        except (TypeError, ValueError):
            parser.error(f"config key {key!r} has value {value!r}, which is not a valid {action.type.__name__}")
    return converted if multi else converted[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Two stages: `--config` YAML becomes parser defaults (unknown keys are errors), then flags override."""
    parser = get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        if not os.path.isfile(known.config):
            parser.error(f"--config {known.config!r} " + ("is a directory; pass a YAML file" if os.path.isdir(known.config) else "does not exist"))
        try:
            with open(known.config, encoding="utf-8") as fd:
                cfg = yaml.safe_load(fd) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            where = getattr(e, "problem_mark", None)
            parser.error(f"--config {known.config!r} is not valid YAML" + (f" (line {where.line + 1}, column {where.column + 1}: {e.problem})" if where is not None else f" ({e})"))
        if not isinstance(cfg, dict):
            parser.error(f"--config {known.config!r} must hold a mapping of flag names to values")
        actions = {a.dest: a for a in parser._actions}
        for key, value in cfg.items():
            if key not in actions or key in ("help", "config"):
                close = difflib.get_close_matches(key, [k for k in actions if k not in ("help", "config")], n=1)
                parser.error(f"unknown key {key!r} in {known.config}" + (f"; did you mean {close[0]!r}?" if close else ""))
            cfg[key] = _check_type(parser, key, value, actions[key])
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return args


def get_resolved_config(args: argparse.Namespace) -> dict:
    """The flags as a recipe: `python main.py --config output_dir/args.yaml` reruns the same config."""
    return {k: v for k, v in vars(args).items() if k not in ("config", "list_models")}


# Numeric ranges of the flags: (low, high, low_inclusive, high_inclusive); None: unbounded on that side. nan and inf fail every range.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **{k: (0, None, False, False) for k in ("epochs", "batch_size", "eval_batch_size", "lr", "log_every", "max_steps_per_epoch", "num_classes", "img_size", "teacher_img_size")},
    **{k: (1, None, True, False) for k in ("keep_last", "tfds_shuffle_buffer")},
    **{k: (0, None, True, False) for k in ("min_lr", "warmup_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "clip_grad")},
    **{k: (0, None, True, False) for k in ("eval_every_epochs", "save_every_epochs", "save_every_steps", "tfds_prefetch", "tfds_private_threadpool_size", "seed")},
    **{k: (0, 1, True, False) for k in ("drop_rate", "drop_path_rate", "momentum")},
    "layer_decay": (0, 1, False, True),
}
RANGE_HINTS = {"keep_last": " (the checkpoint just written is always kept; pass a large number to keep them all)", "seed": " (TF seeds are non-negative)"}


def _describe_range(lo, hi, lo_incl: bool, hi_incl: bool) -> str:
    if hi is None:
        return f"{'>=' if lo_incl else '>'} {lo:g}"
    return f"in {'[' if lo_incl else '('}{lo:g}, {hi:g}{']' if hi_incl else ')'}"


def _check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for action in parser._actions:  # nan and inf pass every comparison below as False or True at random: no float flag takes them
        if action.type is not float or getattr(args, action.dest, None) is None:
            continue
        values = getattr(args, action.dest)
        for value in values if isinstance(values, list) else [values]:
            if not math.isfinite(value):
                parser.error(f"{action.option_strings[0]} must be a finite number, got {value}")
    for name, (lo, hi, lo_incl, hi_incl) in RANGES.items():
        value = getattr(args, name)
        if value is None:
            continue
        ok = math.isfinite(value) and (lo is None or (value >= lo if lo_incl else value > lo)) and (hi is None or (value <= hi if hi_incl else value < hi))
        if not ok:
            parser.error(f"--{name} must be {_describe_range(lo, hi, lo_incl, hi_incl)}, got {value}{RANGE_HINTS.get(name, '')}")
    if args.tfds_num_parallel_calls != -1 and args.tfds_num_parallel_calls < 1:
        parser.error(f"--tfds_num_parallel_calls must be -1 (AUTOTUNE) or >= 1, got {args.tfds_num_parallel_calls}")


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop at start-up on values that would only fail (or silently mislead) later."""
    if args.list_models is not None:
        return
    if args.eval_batch_size is None:
        args.eval_batch_size = args.batch_size
    _check_ranges(parser, args)
    from optim_factory import check_schedule_args, get_default_warmup_epochs

    if args.warmup_epochs is None:
        args.warmup_epochs = get_default_warmup_epochs(args.epochs)  # resolved here, so args.yaml and the log show the value used
    try:
        check_schedule_args(
            epochs=args.epochs, lr=args.lr, min_lr=args.min_lr, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, weight_decay=args.weight_decay, weight_decay_end=args.weight_decay_end
        )
    except ValueError as e:
        parser.error(str(e))
    import datasets

    _check_choice(parser, "data_set", args.data_set, datasets.DATA_SETS)
    validate_distillation_args(parser, args)
    validate_augmentation_args(parser, args)
    validate_cellset_args(parser, args)


def validate_cellset_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """h5ad and set-loss flags: valid choices and ranges, and no image-only (or cell-only) flag with the other kind of data."""
    from tasks.cellset import make_set_loss_from_args
    from utils.h5ad import TRANSFORMS

    _check_choice(parser, "h5ad_transform", args.h5ad_transform, TRANSFORMS)
    try:  # the loss checks its own flags (names, estimator, bandwidths, sinkhorn, state parity)
        make_set_loss_from_args(args)
    except ValueError as e:
        parser.error(f"--set_loss and the MMD flags: {e}")
    if args.cells_per_set < 1:
        parser.error(f"--cells_per_set must be >= 1, got {args.cells_per_set}")
    if not 0.0 <= args.eval_frac < 1.0:
        parser.error(f"--eval_frac must be in [0, 1), got {args.eval_frac}")
    if args.eval_perts is not None and args.eval_frac > 0:
        parser.error("pass either --eval_perts or --eval_frac, not both")
    if args.data_set != "h5ad":
        if args.h5ad_path:
            parser.error(f"--h5ad_path given with --data_set {args.data_set}; add --data_set h5ad to train on cell sets")
        return
    image_flags = [f"--{k}" for k in ("num_classes", "img_size", "drop_path_rate") if getattr(args, k) is not None]
    if image_flags:
        parser.error(f"{', '.join(image_flags)} apply to image models; --data_set h5ad builds the set model from the data (genes, perturbations, contexts)")
    if args.kd:
        parser.error("--kd distils classifier logits; --data_set h5ad trains a set model (no teacher logits)")


def validate_augmentation_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Mixup/CutMix and label smoothing: probabilities in [0, 1], a sane box range, image data only."""
    from utils import mixup as mixup_lib

    _check_choice(parser, "mixup_mode", args.mixup_mode, mixup_lib.MODES)
    for flag in ("mixup", "cutmix"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} (an alpha) must be >= 0, got {getattr(args, flag)}")
    for flag in ("mixup_prob", "mixup_switch_prob"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag} must be in [0, 1], got {getattr(args, flag)}")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.cutmix_minmax is not None:
        lo, hi = args.cutmix_minmax
        if not 0.0 < lo < hi <= 1.0:
            parser.error(f"--cutmix_minmax needs 0 < MIN < MAX <= 1, got {lo} {hi}")
    if mixup_lib.is_enabled(args) and args.data_set not in ("digits", "tfds"):
        parser.error(f"--mixup/--cutmix mix images; --data_set {args.data_set} has none")


def _check_choice(parser: argparse.ArgumentParser, flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1)
    parser.error(f"--{flag} {value!r} is not one of {', '.join(choices)}" + (f"; did you mean {close[0]!r}?" if close else ""))


def validate_distillation_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """KD and EMA flags: a teacher flag without --kd (or --kd without a teacher) would silently train something else."""
    from losses import DISTILLATION_TYPES, KD_SCALINGS

    _check_choice(parser, "distillation_type", args.distillation_type, DISTILLATION_TYPES)
    _check_choice(parser, "kd_scaling", args.kd_scaling, KD_SCALINGS)
    _check_choice(parser, "teacher_dtype", args.teacher_dtype, ("fp32", "bf16"))
    if not 0.0 <= args.kd_alpha <= 1.0:
        parser.error(f"--kd_alpha must be in [0, 1], got {args.kd_alpha}")
    if args.kd_temperature <= 0:
        parser.error(f"--kd_temperature must be > 0, got {args.kd_temperature}")
    if args.kd:
        if args.distillation_type == "none":
            parser.error("--kd needs --distillation_type soft or hard, got none")
        for flag in ("teacher_arch", "teacher_path"):
            if not getattr(args, flag):
                parser.error(f"--kd needs --{flag} (the teacher's model name and its trained weights)")
        from utils import fs

        if not fs.isfile(args.teacher_path):  # local or gs://
            parser.error(f"--teacher_path {args.teacher_path!r} does not exist; pass a checkpoint-*.pt from a teacher run, a timm-style state dict or a .safetensors file")
    else:
        given = [f"--{k}" for k in ("teacher_arch", "teacher_path", "teacher_img_size") if getattr(args, k) is not None]
        given += ["--distillation_type"] if args.distillation_type != "none" else []
        if given:
            parser.error(f"{', '.join(given)} given without --kd; add --kd to distil, or drop them")
    if not 0.0 < args.model_ema_decay < 1.0:
        parser.error(f"--model_ema_decay must be in (0, 1), got {args.model_ema_decay}")
    if args.model_ema_eval and not args.model_ema:
        parser.error("--model_ema_eval needs --model_ema (there are no EMA weights to evaluate)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from utils import errors
    from utils.logging import setup_logging

    if args.list_models is not None:
        import models

        print("\n".join(models.list_models(args.list_models)))
        return {}
    if args.fsdp:
        args.parallel = "fsdp"
    if args.parallel == "pjrt":
        import torch_xla

        # One process per local device (TPU v4+: one per chip); every process runs run() on its own share.
        torch_xla.launch(_pjrt_worker, args=(args,))
        return {}
    # Runtime first: on XLA it imports torch_xla before anything imports TensorFlow.
    from utils.device import make_runtime

    with errors.startup():
        runtime = make_runtime(args.device, args.precision, args.parallel, args.xla_cache_dir)
    setup_logging(runtime.is_main)
    try:
        return run(args, runtime)
    finally:
        runtime.close()


def _pjrt_worker(index: int, args: argparse.Namespace) -> None:
    from utils import errors
    from utils.device import make_runtime
    from utils.logging import setup_logging

    with errors.startup():
        runtime = make_runtime(args.device, args.precision, "pjrt", args.xla_cache_dir)
    setup_logging(runtime.is_main)
    try:
        run(args, runtime)
    finally:
        runtime.close()


# Model constructor arguments that come from flags (image models); the flag names them in errors.
IMAGE_MODEL_FLAGS = {"num_classes": "--num_classes", "drop_rate": "--drop_rate", "drop_path_rate": "--drop_path_rate", "img_size": "--img_size"}


def get_model_kwargs(args: argparse.Namespace, data) -> dict:
    """Model constructor arguments: classes and image options for images; the data's genes, perturbations and contexts for cell sets."""
    if data.kind == "cellset":
        return {"n_genes": data.cells.n_genes, "n_perts": data.cells.n_perts, "n_contexts": data.cells.n_contexts, "dropout": args.drop_rate}
    return {"num_classes": args.num_classes or data.num_classes, "drop_rate": args.drop_rate, "drop_path_rate": args.drop_path_rate, "img_size": args.img_size}


def check_model_flags(args: argparse.Namespace) -> None:
    """Before any data is read: the model exists and takes every model flag given (built on the meta device, no memory, no weights)."""
    import models

    if args.data_set == "h5ad":
        kwargs = {"n_genes": 8, "n_perts": 2, "n_contexts": 1, "dropout": args.drop_rate}  # sizes come from the data; only the names are checked here
        flags = {"dropout": "--drop_rate"} if args.drop_rate is not None else {}
        hint = "--data_set h5ad needs a cell-set model, e.g. set_transformer"
    else:
        kwargs = {"num_classes": args.num_classes or 10, "drop_rate": args.drop_rate, "drop_path_rate": args.drop_path_rate, "img_size": args.img_size}
        flags = {k: flag for k, flag in IMAGE_MODEL_FLAGS.items() if getattr(args, k) is not None}
        hint = f"--data_set {args.data_set} needs an image classifier (a timm model or small_cnn)"
    models.check_model_kwargs(args.model, kwargs, flags=flags, hint=hint)


def build_trainer(args: argparse.Namespace, runtime):
    """Everything before the first train step: data, model, optimizer, task, EMA, logger, resume. Runs inside `utils.errors.startup()`."""
    import torch

    import datasets
    import engine
    import models
    from optim_factory import Schedule, make_optimizer
    from tasks.classification import ClassificationTask
    from utils import checkpoint as ckpt
    from utils.logging import MetricLogger

    split = max(runtime.world_size, runtime.n_devices)
    for flag, value in (("--batch_size", args.batch_size), ("--eval_batch_size", args.eval_batch_size)):
        if value % split:
            raise ValueError(
                f"{flag} {value} does not divide over {runtime.world_size} process(es) x {runtime.n_devices // runtime.world_size} device(s) each; pick a multiple of {split}, e.g. {(value // split + 1) * split}"
            )
    ckpt.check_output_dir(args.resume, args.output_dir)  # before the data: a wrong --resume or a used --output_dir fails in a second
    check_model_flags(args)  # before the data too: a model flag the model does not take fails in a second, not after the pipeline is built
    torch.manual_seed(args.seed)
    log.info("runtime: %s", runtime.describe())
    log.info("batch: %d global, %d per process, %d per device", args.batch_size, args.batch_size // runtime.world_size, args.batch_size // split)
    data = datasets.build_data(args, runtime.rank, runtime.world_size)
    if args.max_steps_per_epoch:
        data.steps_per_epoch = min(data.steps_per_epoch, args.max_steps_per_epoch)
    log.info("data: %s, %d steps per epoch, %d eval examples in %d batches", data.info, data.steps_per_epoch, data.n_eval_examples, data.n_eval_batches)

    num_classes = args.num_classes or data.num_classes
    model_kwargs = get_model_kwargs(args, data)
    if data.image_shape is not None:
        models.check_model_input(args.model, model_kwargs, data.image_shape)
    model = models.create_model(args.model, **model_kwargs)
    if args.init_checkpoint:
        ckpt.load_model_weights(model, args.init_checkpoint, what="--init_checkpoint")
    model.to(runtime.device)
    model = runtime.wrap_model(model)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters, %s", args.model, n_params / 1e6, ", ".join(f"{k} {v}" for k, v in model_kwargs.items() if v is not None))

    optimizer = make_optimizer(runtime.unwrap(model), args.opt, args.lr, args.weight_decay, momentum=args.momentum, layer_decay=args.layer_decay)
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
    log.info("%s", schedule.describe(data.steps_per_epoch))
    if data.kind == "cellset":
        from tasks.cellset import make_cellset_task

        task = make_cellset_task(args, data.cells)
    elif args.kd:
        from tasks.distillation import make_distillation_task

        # After the optimizer: the teacher's weights must never be in it, nor in the EMA or the checkpoint.
        task = make_distillation_task(args, runtime, model, num_classes)
    else:
        task = ClassificationTask(runtime, label_smoothing=args.label_smoothing)
    ema = None
    if args.model_ema:
        from utils.ema import ModelEma

        ema = ModelEma(runtime.unwrap(model), args.model_ema_decay)
        log.info("model EMA: decay %g, updated inside the train step%s", args.model_ema_decay, ", evaluated as eval_ema/*" if args.model_ema_eval else "")

    if runtime.is_main and args.output_dir:
        from utils import fs

        fs.write_text_atomic(fs.join(args.output_dir, "args.yaml"), yaml.safe_dump(get_resolved_config(args), sort_keys=False), what="--output_dir")
    logger = MetricLogger(args.output_dir, runtime.is_main, total_steps, tensorboard=args.tensorboard)
    trainer = engine.Trainer(args, runtime, model, task, optimizer, schedule, data, logger, examples_per_step=args.batch_size, ema=ema)
    found = ckpt.find_resume(args.resume, args.output_dir)
    if found:
        fpath, state = found
        trainer.load_state_dict(state, source=fpath)
        log.info("resumed from %s at epoch %d, step %d", fpath, trainer.position.epoch, trainer.position.global_step)
    return trainer


def run(args: argparse.Namespace, runtime) -> dict:
    """Wire data, model, optimizer and engine for this process (the start-up phase), then train."""
    from utils import errors

    with errors.startup():
        trainer = build_trainer(args, runtime)
    try:
        metrics = trainer.fit()
    finally:
        trainer.logger.close()
    summary = {**metrics, "steps": trainer.position.global_step}
    if runtime.compile_count() is not None:
        summary["compiles"] = runtime.compile_count()
    if runtime.is_main:
        print("final: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary


def get_exit_code(e: BaseException) -> int | None:
    """The exit code for an expected way to stop (see the module docstring); None for a bug, which keeps its traceback.

    Decided by type alone: `utils.errors.UserError` (every start-up check, turned into one by `utils.errors.startup`, and the bad data or failed writes found while training) carries its code; a stop signal and divergence have theirs. Any other exception is a bug, wherever it was raised.
    """
    from engine import TrainingDiverged
    from utils.errors import UserError
    from utils.preemption import TrainingStopped

    if isinstance(e, TrainingStopped):
        return e.exit_code
    if isinstance(e, TrainingDiverged):
        return EXIT_DIVERGED
    if isinstance(e, UserError):
        return e.exit_code
    return None


def get_resume_command(argv: list[str], output_dpath: str) -> str:
    """The command that continues a stopped run: the same flags, with `--resume auto` and the same `--output_dir`."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        if arg in ("--resume", "--output_dir"):
            skip_value = True
            continue
        if not arg.startswith(("--resume=", "--output_dir=")):
            kept.append(arg)
    return shlex.join(["python", "main.py", *kept, "--resume", "auto", "--output_dir", output_dpath])


def cli(argv: list[str] | None = None) -> int:
    """`python main.py ...`: run `main`, print one `error:` or `stopped:` line on stderr for an expected stop, and return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except SystemExit as e:  # argparse already printed the usage and the error
        if isinstance(e.code, int | None):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (set-up, data, shut-down): nothing to save
        print("stopped: interrupted (SIGINT) outside the training loop; no checkpoint was written for it", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as e:
        code = get_exit_code(e)
        if code is None:
            raise
        from utils.preemption import TrainingStopped

        message = f"{e}\n  {get_resume_command(argv, e.output_dpath)}" if isinstance(e, TrainingStopped) else str(e)
        print(f"{'stopped' if isinstance(e, TrainingStopped) else 'error'}: {message}", file=sys.stderr)
        return code
    return 0


def program() -> None:
    """`python main.py`: the CLI as a process. Signals after training (or a second one during a stop) exit at once: see `utils.preemption`."""
    from utils import preemption

    preemption.set_exit_at_once(True)
    code = cli()
    preemption.setup_exit_now_handlers()  # interpreter shut-down (TF's clean-up) is next: nothing to save
    sys.exit(code)


if __name__ == "__main__":
    program()
