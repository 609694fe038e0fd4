"""`ModelConfig`: the `model` flags, and the constructor arguments they become for image and cell-set models."""

import dataclasses
import json

import torch
import yaml

from models.registry import check_model_kwargs
from utils import settings

# Model constructor arguments that come from flags; the flag names them in errors.
IMAGE_MODEL_FLAGS = {"num_classes": "--num_classes", "drop_rate": "--drop_rate", "drop_path_rate": "--drop_path_rate", "img_size": "--img_size"}
CELLSET_MODEL_FLAGS = {"dropout": "--drop_rate"}


def parse_model_kwargs(value: str | dict | None) -> dict | None:
    """`--model_kwargs`: a YAML or JSON mapping of constructor arguments (`'{global_pool: avg, class_token: false}'`), or a mapping from a recipe."""
    if value is None or isinstance(value, dict):
        mapping = value
    else:
        try:
            mapping = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(
                f"--model_kwargs {value!r} is not a YAML/JSON mapping ({str(e).splitlines()[0]}); write it like '{{patch_size: 16, global_pool: avg}}'"
            ) from e
    if mapping is None:
        return None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
        raise ValueError(f"--model_kwargs {value!r} is not a mapping of argument names to values; write it like '{{patch_size: 16, global_pool: avg}}'")
    json.dumps(mapping)  # args.yaml and checkpoints store it: plain values only
    return mapping


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which backbone, its head and regularisation, and the weights it starts from."""

    model: str = "small_cnn"
    num_classes: int | None = settings.setting(None, range=settings.POSITIVE)
    drop_rate: float | None = settings.setting(None, range=settings.FRACTION)
    drop_path_rate: float | None = settings.setting(None, range=settings.FRACTION)
    img_size: int | None = settings.setting(None, range=settings.POSITIVE)
    init_checkpoint: str | None = None
    head_init_bias: float | None = None
    model_kwargs: dict | None = None  # more constructor arguments (--model_kwargs), checked against the constructor like the flags

    def __post_init__(self):
        settings.check_fields(self)
        object.__setattr__(self, "model_kwargs", parse_model_kwargs(self.model_kwargs))

    def _with_model_kwargs(self, kwargs: dict, flags: dict[str, str]) -> dict:
        """`kwargs` plus --model_kwargs; a key that a flag or the data already sets is an error (two values, one would be ignored)."""
        extra = self.model_kwargs or {}
        for key in extra:
            if kwargs.get(key) is not None:
                source = f"{flags[key]}" if key in flags else "the data"
                fix = f"set it with {flags[key]} only" if key in flags else "drop it from --model_kwargs"
                raise ValueError(f"--model_kwargs sets {key!r}, which {source} already sets; {fix}")
        return {**kwargs, **extra}

    def image_kwargs(self, num_classes: int) -> dict:
        """Constructor arguments of an image classifier with `num_classes` outputs (None values are left to the model)."""
        kwargs = {"num_classes": num_classes, "drop_rate": self.drop_rate, "drop_path_rate": self.drop_path_rate, "img_size": self.img_size}
        return self._with_model_kwargs(kwargs, IMAGE_MODEL_FLAGS)

    def cellset_kwargs(self, n_genes: int, n_perts: int, n_contexts: int) -> dict:
        """Constructor arguments of a cell-set model: sizes from the data, dropout from `--drop_rate`."""
        return self._with_model_kwargs({"n_genes": n_genes, "n_perts": n_perts, "n_contexts": n_contexts, "dropout": self.drop_rate}, CELLSET_MODEL_FLAGS)

    def init_head(self, model: torch.nn.Module) -> None:
        """`--head_init_bias`: every bias of the classifier head starts at this value (big_vision's init_head_bias, e.g. -6.9 with sigmoid_xent)."""
        if self.head_init_bias is None:
            return
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        bias = getattr(head, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"--head_init_bias {self.head_init_bias:g}: model {self.model!r} has no classifier bias (get_classifier().bias); drop the flag")
        with torch.no_grad():
            bias.fill_(self.head_init_bias)

    def check_flags(self, data_kind: str, data_set: str) -> None:
        """Before any data is read: the model exists and takes every model flag given (built on the meta device: no memory, no weights)."""
        if data_kind == "cellset":
            kwargs = self.cellset_kwargs(n_genes=8, n_perts=2, n_contexts=1)  # sizes come from the data; only the names are checked here
            flags = {k: v for k, v in CELLSET_MODEL_FLAGS.items() if kwargs[k] is not None}
            hint = f"--data_set {data_set} needs a cell-set model, e.g. set_transformer"
        else:
            kwargs = self.image_kwargs(self.num_classes or 10)
            flags = {k: flag for k, flag in IMAGE_MODEL_FLAGS.items() if getattr(self, k) is not None}
            hint = f"--data_set {data_set} needs an image classifier (a timm model or small_cnn)"
        flags.update({k: f"--model_kwargs {k}" for k in self.model_kwargs or {}})
        check_model_kwargs(self.model, kwargs, flags=flags, hint=hint)
