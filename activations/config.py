"""The activation-extraction settings (`--extract_*`, `--activations_dir`) and the token selection spec."""

import dataclasses
import re

from utils import settings

DTYPES = ("bf16", "fp16", "fp32")
TOKEN_KINDS = ("all", "cls", "mean", "first", "random")
SPLIT_HINT = "eval (the eval split), train (read in order, padded and masked like eval), or the NAME of one of --tfds_eval_splits"
_TOKENS_RE = re.compile(r"(all|cls|mean)|(first|random):([1-9][0-9]*)")


@dataclasses.dataclass(frozen=True)
class TokenSelection:
    """Which tokens of a layer's `[b, n, d]` output are kept: all n, the class token, their mean, the first k, or k positions drawn once with the seed."""

    kind: str
    k: int = 0

    @classmethod
    def parse(cls, text: str) -> "TokenSelection":
        m = _TOKENS_RE.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"--extract_tokens {text!r} is not one of all, cls, mean, first:K, random:K (K a positive integer, e.g. random:16)")
        return cls(m.group(1)) if m.group(1) else cls(m.group(2), int(m.group(3)))

    def describe(self) -> str:
        return f"{self.kind}:{self.k}" if self.k else self.kind

    @property
    def keeps_token_axis(self) -> bool:
        """Rows are `[k, d]` (all, first, random), or `[d]` (cls, mean)."""
        return self.kind in ("all", "first", "random")


@dataclasses.dataclass(frozen=True)
class ActivationsConfig:
    """What to extract, from which split, how it is selected and stored; `extract_layers` empty: no extraction."""

    extract_layers: str | None = None  # comma-separated module names of model.named_modules()
    activations_dir: str | None = None  # None: OUTPUT_DIR/activations
    extract_only: bool = False
    extract_split: str = "eval"
    extract_tokens: str = "all"
    extract_dtype: str = settings.setting("bf16", choices=DTYPES)
    extract_rows_per_shard: int = settings.setting(8192, range=settings.AT_LEAST_ONE)
    extract_queue: int = settings.setting(4, range=settings.NON_NEGATIVE, hint=" (0: copy and write each step in the loop, for comparison)")
    extract_max_examples: int | None = settings.setting(None, range=settings.AT_LEAST_ONE)

    def __post_init__(self):
        settings.check_fields(self)
        self.get_tokens()
        if self.extract_only and not self.layers:
            raise ValueError("--extract_only needs --extract_layers NAME[,NAME...] (module names of the model, e.g. blocks.0,blocks.5)")
        if not self.layers and self.activations_dir:
            raise ValueError(f"--activations_dir {self.activations_dir!r} given without --extract_layers; add the layers to extract")
        if not self.extract_split.strip():
            raise ValueError(f"--extract_split is empty; pass {SPLIT_HINT}")
        dup = sorted({n for n in self.layers if self.layers.count(n) > 1})
        if dup:
            raise ValueError(f"--extract_layers names {', '.join(dup)} twice; list each layer once")

    @property
    def layers(self) -> list[str]:
        return [n.strip() for n in (self.extract_layers or "").split(",") if n.strip()]

    @property
    def enabled(self) -> bool:
        return bool(self.layers)

    def get_tokens(self) -> TokenSelection:
        return TokenSelection.parse(self.extract_tokens)

    def get_dpath(self, output_dpath: str) -> str:
        """Where the files go: --activations_dir, else OUTPUT_DIR/activations."""
        if self.activations_dir:
            return self.activations_dir
        if not output_dpath:
            raise ValueError("--extract_layers needs --activations_dir DIR when --output_dir is empty")
        return output_dpath.rstrip("/") + "/activations"
