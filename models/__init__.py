"""Backbones: `create_model(name, **kwargs)` over our registry first, then timm's.

Our own models register with `models.registry.register_model`. This package never imports torch_xla:
device placement and sharding live in utils/device.py.
"""

from models import (
    set_model,  # noqa: F401
    small_cnn,  # noqa: F401  (register our models)
)
from models.config import ModelConfig
from models.registry import check_model_input, check_model_kwargs, create_model, list_models, register_model

__all__ = ["ModelConfig", "check_model_input", "check_model_kwargs", "create_model", "list_models", "register_model"]
