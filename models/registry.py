"""Model registry: our `@register_model` functions plus everything timm registers."""

import difflib
from collections.abc import Callable

import timm
import torch

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_model(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """Register `fn` under its function name; names must not shadow timm's."""
    name = fn.__name__
    assert name not in _MODELS, f"model {name!r} registered twice"
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "") -> list[str]:
    ours = [n for n in _MODELS if pattern in n]
    return sorted(ours) + timm.list_models(f"*{pattern}*" if pattern else "")


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """Build a model by name; None-valued kwargs are dropped so model defaults stay in charge.

    Pretrained weights are never fetched here (no network at run time); load them with
    `utils.checkpoint.load_model_weights` from a local file instead.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in _MODELS:
        return _MODELS[name](**kwargs)
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, **kwargs)
    known = list(_MODELS) + timm.list_models()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `python main.py --list_models` for the names"
    raise ValueError(f"unknown model {name!r}{hint}")
