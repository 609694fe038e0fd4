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

from activations.config import ActivationsConfig
from cli import big_vision_config
from cli.parser import DESCRIPTION, ArgumentParser, get_args_parser  # noqa: F401  (the parser lives in cli/: main.py answers --help without torch)
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
from utils.logging import LoggingConfig

NOT_CONFIG = ("help", "config", "config_ignore", "list_models")  # flags that are not part of a run's configuration
MAPPING_FLAGS = ("model_kwargs",)  # flags whose recipe value may be a YAML mapping (on the command line: the mapping as YAML/JSON text)


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


def _load_recipe(parser: argparse.ArgumentParser, fpath: str, ignore: list[str] | None = None) -> dict:
    """The YAML mapping (or big_vision config) of `--config`, every key a flag and every value of that flag's type (else one usage error)."""
    if big_vision_config.is_config_file(fpath):
        try:
            cfg = big_vision_config.load_recipe(fpath, ignore)
        except ValueError as e:
            parser.error(str(e))
        return _check_keys(parser, fpath, cfg)
    if ignore:
        parser.error(f"--config_ignore applies to big_vision config files (.py); --config {fpath!r} is a YAML recipe: remove its keys instead")
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
    return _check_keys(parser, fpath, cfg)


def _check_keys(parser: argparse.ArgumentParser, fpath: str, cfg: dict) -> dict:
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
    activations: ActivationsConfig
    logs: LoggingConfig
    resume: str = ""
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
    if s.kd.kd and s.classification.loss != "softmax_xent":
        raise ValueError(f"--loss {s.classification.loss} with --kd: distillation mixes softmax cross-entropy with the KD term; drop --loss or --kd")
    if s.data.kind != "cellset":
        return
    image_flags = [f"--{k}" for k in ("num_classes", "img_size", "drop_path_rate") if getattr(s.model, k) is not None]
    if image_flags:
        raise ValueError(f"{', '.join(image_flags)} apply to image models; --data_set h5ad builds the set model from the data (genes, perturbations, contexts)")
    if s.kd.kd:
        raise ValueError("--kd distils classifier logits; --data_set h5ad trains a set model (no teacher logits)")
    if s.runtime.channels_last:
        raise ValueError("--channels_last reorders [b, c, h, w] image batches; --data_set h5ad trains a set model on [b, s, g] cell sets: drop --channels_last")


# --smoke: the tiny timm model of each family (name prefix); other models become small_cnn; ours and timm's test_* stay.
SMOKE_MODELS = (("vit_", "test_vit"), ("deit_", "test_vit"), ("convnext", "test_convnext"), ("resnet", "test_resnet"), ("efficientnet", "test_efficientnet"))
SMOKE_SIZES = {"batch_size": 8, "eval_batch_size": 8, "epochs": 1, "max_steps_per_epoch": 2, "tfds_shuffle_buffer": 64, "log_every": 1}
SMOKE_SIZES |= {"eval_every_epochs": 1, "save_every_epochs": 1, "save_every_steps": 0, "keep_last": 1, "warmup_epochs": None, "warmup_steps": None}
SMOKE_SIZES |= {"resume": ""}


def get_smoke_model(name: str) -> str:
    """The tiny stand-in of `name` in a smoke run."""
    import models

    if models.registry.is_registered(name) or name.startswith("test_"):
        return name  # ours and timm's test models are small already
    return next((small for prefix, small in SMOKE_MODELS if name.startswith(prefix)), "small_cnn")


def get_smoke_eval_sets(args: argparse.Namespace) -> dict:
    """Named eval sets on the embedded photos: those of the train dataset stay (train slices as they are, other splits -> validation);
    those of other datasets (imagenet_v2, imagenet2012_real) are dropped, as big_vision's runlocal keeps a few local evals."""
    if not args.tfds_eval_splits:
        return {}
    other = {item.split("=", 1)[0] for item in args.tfds_eval_datasets or []}
    splits = [(name, split) for name, _, split in (item.partition("=") for item in args.tfds_eval_splits) if name not in other]
    splits = [f"{name}={split if split.startswith('train') else 'validation'}" for name, split in splits]
    kept = {item.split("=", 1)[0] for item in splits}
    pps = [item for item in args.tfds_eval_pp or [] if item.split("=", 1)[0] in kept]
    return {"tfds_eval_splits": splits or None, "tfds_eval_datasets": None, "tfds_eval_pp": pps or None}


def apply_smoke(args: argparse.Namespace) -> None:
    """`--smoke`: shrink the run in place (model, data, sizes) and log one line of what changed; everything else is the recipe's."""
    import timm

    changes = dict(SMOKE_SIZES)
    if args.data_set == "tfds":
        changes |= {"data_set": "photos", "tfds_name": None, "tfds_data_dir": None, "tfds_train_split": "train", "tfds_eval_split": "validation"}
        changes |= get_smoke_eval_sets(args)
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
    pre.add_argument("--config_ignore", nargs="+", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_load_recipe(parser, known.config, known.config_ignore))
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
