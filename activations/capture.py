"""Forward hooks that stash chosen layers' outputs inside the compiled step, and the checks and shape probe behind them.

A hook never reads a value: it takes the module's output (the first element of a tuple), views it as `[b, n, d]` tokens (a conv map `[b, c, h, w]` becomes
`[b, h*w, c]`, a pooled `[b, d]` one token), applies the token selection with static shapes (a slice, a mean, or `index_select` with one index tensor drawn
once from the seed) and the storage dtype, and keeps the result until `pop()`. So the step stays one graph and the activations leave the device only after it
has run, in the writer thread. `pop()` hands over and clears the stash every step: nothing of an older graph stays alive.
"""

import difflib
import logging

import torch
from torch import nn

from activations.config import TokenSelection

log = logging.getLogger(__name__)

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """name -> module of `model.named_modules()`; a ValueError names the unknown ones and their closest matches."""
    modules = dict(model.named_modules())
    bad = [n for n in names if n not in modules or n == ""]
    if not bad:
        return {n: modules[n] for n in names}
    known = [n for n in modules if n]
    hints = []
    for name in bad:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hints.append(f"{name!r} (did you mean {', '.join(close)}?)" if close else repr(name))
    tops = sorted({n.split(".")[0] for n in known})
    raise ValueError(
        f"--extract_layers: no module {'; '.join(hints)} in {type(model).__name__}; names come from model.named_modules(), "
        f"e.g. {', '.join(known[:4])} (top level: {', '.join(tops[:12])})"
    )


def check_layers(model: nn.Module, names: list[str], tokens: TokenSelection) -> dict[str, nn.Module]:
    """The start-up checks that need no forward (the names exist, `cls` has a class token to take); returns the modules by name."""
    modules = resolve_layers(model, names)
    if tokens.kind == "cls" and int(getattr(model, "num_prefix_tokens", 0) or 0) < 1:
        raise ValueError("--extract_tokens cls: the model has no class token (num_prefix_tokens 0); use mean, all, first:K or random:K")
    return modules


def as_tokens(name: str, out) -> torch.Tensor:
    """A layer output as `[b, n, d]`: the first element of a tuple, NCHW maps as h*w tokens, a pooled `[b, d]` as one token."""
    x = out[0] if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor) else out
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"--extract_layers {name!r}: the module returns {type(out).__name__}, not a tensor; pick a module whose output is a tensor")
    if x.ndim == 3:
        return x
    if x.ndim == 4:
        return x.flatten(2).transpose(1, 2)
    if x.ndim == 2:
        return x[:, None, :]
    raise ValueError(f"--extract_layers {name!r}: output of shape {tuple(x.shape)}; expected [b, n, d] tokens, [b, c, h, w] maps or [b, d] features")


def get_token_ids(tokens: TokenSelection, n: int, seed: int) -> torch.Tensor:
    """The positions a selection keeps out of `n` (int64, sorted); -1 for a mean over all of them."""
    if tokens.kind == "all":
        return torch.arange(n)
    if tokens.kind == "cls":
        return torch.zeros(1, dtype=torch.int64)
    if tokens.kind == "mean":
        return torch.full((1,), -1, dtype=torch.int64)
    if tokens.k > n:
        raise ValueError(f"--extract_tokens {tokens.describe()}: the layer has only {n} tokens; pick K <= {n}")
    if tokens.kind == "first":
        return torch.arange(tokens.k)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: tokens.k].sort().values


class ActivationCapture:
    """Hooks on `names` of `model` (a context manager); `pop()` returns {name: selected tensor} of the last forward and clears it."""

    def __init__(self, model: nn.Module, names: list[str], tokens: TokenSelection, dtype: str, seed: int = 0):
        self.modules = check_layers(model, names, tokens)
        self.tokens, self.dtype, self.seed = tokens, TORCH_DTYPES[dtype], seed
        self.raw_shapes: dict[str, tuple[int, ...]] = {}  # per-row [n, d] of each layer, from `probe`
        self.acts: dict[str, torch.Tensor] = {}
        self._index: dict[str, torch.Tensor] = {}  # random:K positions, on the device
        self._handles: list = []
        self._probing = False

    def __enter__(self) -> "ActivationCapture":
        self._handles = [m.register_forward_hook(self._make_hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.acts = {}

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args, out) -> None:
            x_bnd = as_tokens(name, out)
            if self._probing:
                self.raw_shapes[name] = tuple(x_bnd.shape[1:])
                return
            self.acts[name] = self.select(name, x_bnd).detach().to(self.dtype)

        return hook

    def select(self, name: str, x_bnd: torch.Tensor) -> torch.Tensor:
        """Static-shape token selection: `[b, n, d]` -> `[b, k, d]` (all, first, random) or `[b, d]` (cls, mean)."""
        kind = self.tokens.kind
        if kind == "all":
            return x_bnd
        if kind == "cls":
            return x_bnd[:, 0]
        if kind == "mean":
            return x_bnd.float().mean(dim=1)
        if kind == "first":
            return x_bnd[:, : self.tokens.k]
        return x_bnd.index_select(1, self._index[name])

    def pop(self) -> dict[str, torch.Tensor]:
        missing = [n for n in self.modules if n not in self.acts]
        assert not missing, f"layers {missing} did not run in this forward (a module the model skips at eval?)"
        acts, self.acts = self.acts, {}
        return acts

    def probe(self, run_forward) -> None:
        """Record every layer's per-row `[n, d]` shape from one forward (`run_forward()`, e.g. on the meta device), then check the selection against it."""
        self._probing = True
        try:
            run_forward()
        except Exception as e:  # the rest of a meta forward (a loss without a meta kernel) may fail once every hook has fired
            if len(self.raw_shapes) < len(self.modules):
                raise
            log.debug("shape probe: forward stopped after the hooks (%s)", e)
        finally:
            self._probing = False
        missing = [n for n in self.modules if n not in self.raw_shapes]
        if missing:
            raise ValueError(f"--extract_layers {', '.join(missing)}: the module does not run in the model's eval forward; pick a module that does")

    def setup_indices(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The kept positions of every layer (host copies); random:K index tensors are placed on `device` once, outside the step."""
        ids = {name: get_token_ids(self.tokens, shape[0], self.seed) for name, shape in self.raw_shapes.items()}
        if self.tokens.kind == "random":
            self._index = {name: t.to(device) for name, t in ids.items()}
        return ids

    def row_shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of one example of `name`."""
        n, d = self.raw_shapes[name]
        if not self.tokens.keeps_token_axis:
            return (d,)
        return (n if self.tokens.kind == "all" else self.tokens.k, d)
