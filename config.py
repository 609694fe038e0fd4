"""The command line: the flag table, `--config` YAML recipes, and the typed settings of every component.

Flags are defined once here (`get_args_parser`); a YAML recipe sets their defaults and flags given on
the command line override it. `parse_settings` turns the result into one frozen settings object per
component (`Settings`): each component's dataclass checks its own fields as it is built, so a bad
value stops here with one line naming the flag. Library code only ever sees those objects; this is
the one module that knows argparse.
"""

import argparse
import dataclasses
import difflib
import logging
import os

import yaml

from datasets import DataConfig
from engine import TrainConfig
from losses import SetLossConfig
from models import ModelConfig
from optim_factory import OptimConfig
from tasks.cellset import CellEvalConfig
from tasks.classification import ClassificationConfig
from tasks.distillation import DistillConfig
from utils import settings
from utils.device import RuntimeConfig
from utils.ema import EmaConfig

DESCRIPTION = (
    "Train a backbone: python main.py [--config recipe.yaml] [--flag value ...]. "
    "With no arguments it trains the default model on the embedded digits dataset on CPU."
)
NOT_CONFIG = ("help", "config", "list_models")  # flags that are not part of a run's configuration
MAPPING_FLAGS = ("model_kwargs",)  # flags whose recipe value may be a YAML mapping (on the command line: the mapping as YAML/JSON text)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage on errors: the full flag list is `--help`'s job, not every typo's."""

    def error(self, message: str):
        self.exit(
            2, f"usage: {self.prog} [--config recipe.yaml] [--flag value ...] (python {self.prog} --help lists the flags)\n{self.prog}: error: {message}\n"
        )


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("main.py", description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML recipe; its keys are defaults for the flags below, which override it")
    p.add_argument("--list_models", default=None, nargs="?", const="", metavar="PATTERN", help="print model names (optionally matching PATTERN) and exit")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="small_cnn", help="timm model name or one registered in models/")
    g.add_argument("--num_classes", type=int, default=None, help="default: from the dataset")
    g.add_argument("--drop_rate", type=float, default=None)
    g.add_argument("--drop_path_rate", type=float, default=None)
    g.add_argument("--img_size", type=int, default=None, help="passed to models that take it (ViTs)")
    g.add_argument("--init_checkpoint", default=None, help="start from these weights (our checkpoint, timm state dict or .safetensors)")
    g.add_argument(
        "--model_kwargs",
        default=None,
        metavar="MAPPING",
        help="more constructor arguments as YAML/JSON, e.g. '{global_pool: avg, class_token: false, pos_embed: sincos}' (checked against the model)",
    )

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
    g.add_argument("--big_vision_pp_train", default=None, help="train pp string (default: the dataset's)")
    g.add_argument("--big_vision_pp_eval", default=None, help="eval pp string (default: the dataset's)")

    g = p.add_argument_group(
        "h5ad / cell sets",
        "Perturbation screens in .h5ad files (--data_set h5ad): "
        "one example is a set of perturbed cells of one (context, perturbation) plus a matched set of control cells",
    )
    g.add_argument(
        "--h5ad_path",
        nargs="+",
        default=None,
        metavar="PATH",
        help="one or more .h5ad files; data/sim_vcc.h5ad is the embedded simulated screen, generated on first use",
    )
    g.add_argument("--pert_col", default="target_gene", help="obs column with the perturbation label")
    g.add_argument("--context_col", default="cell_line", help="obs column with the context (cell line)")
    g.add_argument("--control_label", default="non-targeting", help="perturbation label of the control cells")
    g.add_argument("--cells_per_set", type=int, default=64, help="cells in a perturbed set and in its control set")
    g.add_argument("--h5ad_transform", default="auto", help="auto | log1p (raw counts: normalize_total 1e4 + log1p) | none (X used as stored)")
    g.add_argument("--gene_vocab", default=None, help="text file, one gene (Ensembl id or symbol) per line: map every file onto this gene order")
    g.add_argument(
        "--h5ad_target_sum",
        default="median",
        help="counts per cell after normalize_total (raw counts only): median (the file's median total, as scanpy and cell-eval) or a number, e.g. 1e4",
    )
    g.add_argument("--h5ad_matrix", default="X", help="the matrix to read: X | raw/X (with raw/var's genes) | layers/NAME, e.g. layers/counts")
    g.add_argument("--h5ad_in_memory", action=argparse.BooleanOptionalAction, default=False, help="load X into RAM once (compressed files)")
    g.add_argument("--eval_perts", default=None, help="text file of held-out perturbations, one per line")
    g.add_argument("--eval_frac", type=float, default=0.0, help="hold out this seeded fraction of the perturbations (0 and no --eval_perts: 0.2)")
    g.add_argument(
        "--eval_contexts",
        nargs="+",
        default=None,
        metavar="CONTEXT",
        help=(
            "hold the eval perturbations out in these contexts only; they train in the others (context transfer). "
            "Default: held out in every context (unseen perturbations)"
        ),
    )
    g.add_argument(
        "--cell_eval",
        default="vcc",
        help=(
            "after training, predict every held-out group at its real size and score it with cell-eval itself, beside both baselines: "
            "off | vcc (MAE, PDS, DES) | minimal | full (all of cell-eval's metrics)"
        ),
    )
    g.add_argument("--cell_eval_threads", type=int, default=1, help="threads for cell-eval's differential expression")

    g = p.add_argument_group("MMD / set loss", "Per-set loss between predicted and observed cells (losses.make_set_loss)")
    g.add_argument("--set_loss", default="energy", help="energy | rbf | sinkhorn | mse (set means only)")
    g.add_argument("--mmd_estimator", default="biased", help="biased (V-statistic) | unbiased (U-statistic), for energy and rbf")
    g.add_argument("--mmd_sigmas", type=float, nargs="+", default=None, help="rbf bandwidths (default: median heuristic per set x 0.25..4)")
    g.add_argument("--sinkhorn_blur", type=float, default=0.05, help="sinkhorn blur (eps = blur^2)")
    g.add_argument("--sinkhorn_iters", type=int, default=50)
    g.add_argument(
        "--set_loss_state_parity", action=argparse.BooleanOptionalAction, default=False, help="halve the biased energy distance (geomloss / STATE convention)"
    )
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
    g.add_argument(
        "--wd_semantics",
        default="torch",
        help=(
            "torch: --weight_decay is the optimizer's own (AdamW decays by lr(t) x wd, SGD adds wd x p to the gradient) | "
            "big_vision: decoupled, each step p -= wd x lr(t) / lr x p (big_vision's wd), for any --opt"
        ),
    )
    g.add_argument(
        "--momentum", type=float, default=None, help="for optimizers with momentum (sgd, rmsprop, lars, ...; default: theirs, 0.9); an error for others"
    )
    g.add_argument("--opt_betas", type=float, nargs="+", default=None, metavar="BETA", help="betas of Adam-like optimizers (default: the optimizer's)")
    g.add_argument("--opt_eps", type=float, default=None, help="eps of optimizers that take one (default: the optimizer's)")
    g.add_argument("--layer_decay", type=float, default=None, help="layer-wise LR decay: the LR of layer i of n is scaled by layer_decay^(n - 1 - i)")
    g.add_argument("--clip_grad", type=float, default=0.0, help="max global grad norm; 0 = no clipping")
    g.add_argument("--label_smoothing", type=float, default=0.0)

    g = p.add_argument_group(
        "augmentation",
        "Mixup/CutMix on the host batch before the device transfer (fixed shapes: `labels` float [b, n_classes]); --label_smoothing applies on top, once",
    )
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha; > 0 turns mixup on")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha; > 0 turns cutmix on")
    g.add_argument(
        "--cutmix_minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"), help="cutmix box sides drawn in [MIN, MAX) x image side (turns cutmix on)"
    )
    g.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixing a batch (or element, or pair)")
    g.add_argument("--mixup_switch_prob", type=float, default=0.5, help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--mixup_mode", default="batch", help="batch | pair | elem: one draw per batch, per pair (i, b-1-i), or per element")

    g = p.add_argument_group("distillation / model EMA")
    g.add_argument(
        "--kd",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="distil from a frozen teacher (needs --teacher_arch, --teacher_path, --distillation_type soft|hard)",
    )
    g.add_argument(
        "--distillation_type", default="none", help="none | soft (T^2 KL to the teacher's softened distribution) | hard (CE to the teacher's argmax)"
    )
    g.add_argument("--teacher_arch", default=None, help="teacher model name (timm or models/)")
    g.add_argument("--teacher_path", default=None, help="teacher weights: our checkpoint-*.pt, a timm-style state dict or .safetensors")
    g.add_argument("--teacher_img_size", type=int, default=None, help="teacher img_size (default: the one stored in our checkpoint, else the model's)")
    g.add_argument("--teacher_dtype", default="fp32", help="fp32 | bf16 (teacher weights and forward in bf16: half the memory and faster on TPU)")
    g.add_argument("--kd_alpha", type=float, default=0.5, help="loss = (1 - alpha) * CE(labels) + alpha * KD")
    g.add_argument("--kd_temperature", type=float, default=1.0, help="softmax temperature T of the soft KD loss")
    g.add_argument(
        "--kd_scaling",
        default="batchmean_t2",
        help="batchmean_t2 (KL summed over classes, batch mean, x T^2) | deit (DeiT's sum / numel: the same divided by the class count)",
    )
    g.add_argument(
        "--model_ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep an EMA of the weights (updated inside the train step, saved as model_ema)",
    )
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
    g.add_argument(
        "--smoke",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="big_vision's runlocal: run the recipe as it is on a tiny model of its family, embedded data, batch 8 and 2 steps (changes are logged)",
    )

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
    if isinstance(value, dict) and key in MAPPING_FLAGS:
        return value  # its component parses and checks it
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


def _load_recipe(parser: argparse.ArgumentParser, fpath: str) -> dict:
    """The YAML mapping of `--config`, every key a flag and every value of that flag's type (else one usage error)."""
    if not os.path.isfile(fpath):
        parser.error(f"--config {fpath!r} " + ("is a directory; pass a YAML file" if os.path.isdir(fpath) else "does not exist"))
    try:
        with open(fpath, encoding="utf-8") as fd:
            cfg = yaml.safe_load(fd) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        parser.error(
            f"--config {fpath!r} is not valid YAML" + (f" (line {where.line + 1}, column {where.column + 1}: {e.problem})" if where is not None else f" ({e})")
        )
    if not isinstance(cfg, dict):
        parser.error(f"--config {fpath!r} must hold a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    for key, value in cfg.items():
        if key not in actions or key in ("help", "config"):
            close = difflib.get_close_matches(key, [k for k in actions if k not in ("help", "config")], n=1)
            parser.error(f"unknown key {key!r} in {fpath}" + (f"; did you mean {close[0]!r}?" if close else ""))
        cfg[key] = _check_type(parser, key, value, actions[key])
    return cfg


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every component's settings for one run, plus `flags`: the resolved flag values (what args.yaml holds)."""

    runtime: RuntimeConfig
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    ema: EmaConfig
    kd: DistillConfig
    set_loss: SetLossConfig
    cell_eval: CellEvalConfig
    classification: ClassificationConfig
    resume: str = ""
    tensorboard: bool = True
    flags: dict = dataclasses.field(default_factory=dict)


def make_settings(args: argparse.Namespace) -> Settings:
    """The components' settings from parsed flags; a ValueError names the bad flag.

    Values a component resolves (the default warm-up, the eval batch size, `--fsdp`) are written back to `args`.
    """
    values = vars(args)
    s = settings.from_mapping(Settings, values)
    args.warmup_epochs, args.eval_batch_size, args.parallel = s.optim.warmup_epochs, s.data.eval_batch_size, s.runtime.parallel
    _check_combination(s)
    return dataclasses.replace(s, flags=get_resolved_config(args))


def _check_combination(s: Settings) -> None:
    """Flags of one kind of data given with the other: they would be ignored without a word."""
    if s.data.kind != "cellset":
        return
    image_flags = [f"--{k}" for k in ("num_classes", "img_size", "drop_path_rate") if getattr(s.model, k) is not None]
    if image_flags:
        raise ValueError(f"{', '.join(image_flags)} apply to image models; --data_set h5ad builds the set model from the data (genes, perturbations, contexts)")
    if s.kd.kd:
        raise ValueError("--kd distils classifier logits; --data_set h5ad trains a set model (no teacher logits)")


# --smoke: the tiny timm model of each family (name prefix); other models become small_cnn; ours and timm's test_* stay.
SMOKE_MODELS = (("vit_", "test_vit"), ("deit_", "test_vit"), ("convnext", "test_convnext"), ("resnet", "test_resnet"), ("efficientnet", "test_efficientnet"))
SMOKE_SIZES = {"batch_size": 8, "eval_batch_size": 8, "epochs": 1, "max_steps_per_epoch": 2, "tfds_shuffle_buffer": 64, "log_every": 1}
SMOKE_SIZES |= {"eval_every_epochs": 1, "save_every_epochs": 1, "keep_last": 1, "warmup_epochs": None, "resume": ""}


def get_smoke_model(name: str) -> str:
    """The tiny stand-in of `name` in a smoke run."""
    import models

    if name in models.registry._MODELS or name.startswith("test_"):
        return name  # ours and timm's test models are small already
    return next((small for prefix, small in SMOKE_MODELS if name.startswith(prefix)), "small_cnn")


def apply_smoke(args: argparse.Namespace) -> None:
    """`--smoke`: shrink the run in place (model, data, sizes) and log one line of what changed; everything else is the recipe's."""
    import timm

    changes = dict(SMOKE_SIZES)
    if args.data_set == "tfds":
        changes |= {"data_set": "photos", "tfds_name": None, "tfds_data_dir": None, "tfds_train_split": "train", "tfds_eval_split": "validation"}
    if args.data_set == "h5ad":
        changes |= {"cells_per_set": min(args.cells_per_set, 16), "cell_eval": "off"}
    for key in ("model", "teacher_arch"):
        name = getattr(args, key)
        if name is None or get_smoke_model(name) == name:
            continue
        changes[key] = get_smoke_model(name)
        cfg = timm.models.get_pretrained_cfg(changes[key]) if timm.is_model(changes[key]) else None
        size_key = "img_size" if key == "model" else "teacher_img_size"
        if cfg is not None and cfg.fixed_input_size and getattr(args, size_key) is None and timm.is_model(name):
            changes[size_key] = timm.models.get_pretrained_cfg(name).input_size[-1]  # the recipe's pp size, which the tiny ViT must take
    changed = {k: v for k, v in changes.items() if getattr(args, k) != v}
    for key, value in changed.items():
        setattr(args, key, value)
    logging.getLogger(__name__).warning("--smoke: %s", ", ".join(f"--{k} {v if v not in ('', None) else repr(v)}" for k, v in changed.items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Two stages: `--config` YAML becomes parser defaults (unknown keys are errors), then flags override;
    every component checks its settings (one usage error line)."""
    parser = get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_load_recipe(parser, known.config))
    args = parser.parse_args(argv)
    if args.smoke:
        apply_smoke(args)
    if args.list_models is None:
        try:
            make_settings(args)
        except ValueError as e:
            parser.error(str(e))
    return args


def parse_settings(argv: list[str] | None = None) -> Settings:
    """`parse_args`, then the components' settings (what `main.py` runs on)."""
    return make_settings(parse_args(argv))


def get_resolved_config(args: argparse.Namespace) -> dict:
    """The flags as a recipe: `python main.py --config output_dir/args.yaml` reruns the same config."""
    return {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
