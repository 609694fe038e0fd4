"""`ModelConfig`: the `model` flags, and the constructor arguments they become for image and cell-set models."""

import dataclasses

from models.registry import check_model_kwargs
from utils import settings

# Model constructor arguments that come from flags; the flag names them in errors.
IMAGE_MODEL_FLAGS = {"num_classes": "--num_classes", "drop_rate": "--drop_rate", "drop_path_rate": "--drop_path_rate", "img_size": "--img_size"}
CELLSET_MODEL_FLAGS = {"dropout": "--drop_rate"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which backbone, its head and regularisation, and the weights it starts from."""

    model: str = "small_cnn"
    num_classes: int | None = settings.setting(None, range=settings.POSITIVE)
    drop_rate: float | None = settings.setting(None, range=settings.FRACTION)
    drop_path_rate: float | None = settings.setting(None, range=settings.FRACTION)
    img_size: int | None = settings.setting(None, range=settings.POSITIVE)
    init_checkpoint: str | None = None

    def __post_init__(self):
        settings.check_fields(self)

    def image_kwargs(self, num_classes: int) -> dict:
        """Constructor arguments of an image classifier with `num_classes` outputs (None values are left to the model)."""
        return {"num_classes": num_classes, "drop_rate": self.drop_rate, "drop_path_rate": self.drop_path_rate, "img_size": self.img_size}

    def cellset_kwargs(self, n_genes: int, n_perts: int, n_contexts: int) -> dict:
        """Constructor arguments of a cell-set model: sizes from the data, dropout from `--drop_rate`."""
        return {"n_genes": n_genes, "n_perts": n_perts, "n_contexts": n_contexts, "dropout": self.drop_rate}

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
        check_model_kwargs(self.model, kwargs, flags=flags, hint=hint)
