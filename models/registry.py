"""Model registry: our `@register_model` functions plus everything timm registers."""

import difflib
import inspect
import re
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


def is_registered(name: str) -> bool:
    """Whether `name` is one of our models (registered here), not timm's."""
    return name in _MODELS


def get_registered() -> dict[str, Callable[..., torch.nn.Module]]:
    """Our models by name (a copy)."""
    return dict(_MODELS)


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


_UNEXPECTED_RE = re.compile(r"unexpected keyword argument '(\w+)'")
_MISSING_RE = re.compile(r"missing \d+ required (?:positional|keyword-only) arguments?: (.+)$")


def get_model_arg_names(name: str) -> list[str]:
    """The keyword arguments `name` takes: its registered function's and its model class's (a timm entrypoint passes **kwargs to the class)."""
    fn = _MODELS.get(name) or timm.models.model_entrypoint(name)
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    try:
        with torch.device("meta"):
            model = create_model(name)
    except Exception:
        return sorted(set(names) - {"pretrained"})
    for cls in type(model).__mro__:
        if cls is torch.nn.Module:
            break
        init = cls.__dict__.get("__init__")
        if init is not None:
            names += [p.name for p in inspect.signature(init).parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    return sorted(set(names) - {"pretrained"})


def _close_args(name: str, key: str) -> str:
    close = difflib.get_close_matches(key, get_model_arg_names(name), n=3, cutoff=0.6)
    return f"; close matches: {', '.join(close)}" if close else ""


def check_model_kwargs(name: str, kwargs: dict, flags: dict[str, str] | None = None, hint: str = "") -> None:
    """Build `name` with `kwargs` on the meta device (no memory, no init cost) and turn a constructor TypeError into a ValueError that names the flag.

    `flags` maps the constructor arguments the user set by flag to those flags (`img_size` -> `--img_size`), so the message says which flag to drop; other
    arguments come from the data, and `hint` says which kind of model fits it. Any other error of the meta build is left to the real build, which reports it
    with the real sizes.
    """
    flags = flags or {}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        with torch.device("meta"):
            create_model(name, **kwargs)
    except TypeError as e:
        message = str(e)
        if m := _UNEXPECTED_RE.search(message):
            key = m.group(1)
            if key in flags:
                raise ValueError(
                    f"{flags[key]} {kwargs[key]} does not apply to model {name!r} (its constructor takes no {key!r}{_close_args(name, key)}); "
                    f"drop {flags[key].split()[0]}{' ' + key if ' ' in flags[key] else ''}, or pick a model that takes it"
                ) from e
            raise ValueError(f"model {name!r} does not take {key!r}, which this data provides" + (f"; {hint}" if hint else "")) from e
        if m := _MISSING_RE.search(message):
            raise ValueError(f"model {name!r} needs {m.group(1)}, which this data does not provide" + (f"; {hint}" if hint else "")) from e
        raise ValueError(f"model {name!r} cannot be built with {kwargs}: {message}" + (f"; {hint}" if hint else "")) from e
    except ValueError:
        raise  # an unknown model name, with close matches
    except Exception:
        return  # not a problem of the arguments' names: the real build reports it


def check_model_input(name: str, kwargs: dict, input_shape: tuple[int, ...]) -> None:
    """One forward of `name` on the meta device with a batch of `input_shape` inputs:
    an input size the model refuses (a ViT built for another --img_size) fails at start-up, not in the first train step."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
            x = torch.empty((2, *input_shape))
    except Exception:
        return  # the real build reports its own errors
    try:
        with torch.no_grad():
            model.eval()(x)
    except (AssertionError, ValueError, RuntimeError) as e:
        from utils.errors import first_line

        text = first_line(e)
        if "meta" in text.lower():
            return  # an op without a meta kernel: says nothing about the input
        raise ValueError(
            f"model {name!r} ({', '.join(f'{k}={v}' for k, v in kwargs.items())}) does not take the train images of shape {tuple(input_shape)} (c, h, w): "
            f"{text}; make --img_size match the pp string's output size, or resize to the model's size in --big_vision_pp_train/--big_vision_pp_eval"
        ) from e
