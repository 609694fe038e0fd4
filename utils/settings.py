"""Typed settings for components: a frozen dataclass per component, its checks in one place.

Each component (the data, the model, the optimizer, a task, the runtime) declares its settings as a
dataclass whose field names are its command-line flag names, so every message names the flag a
user typed (`--lr must be > 0, got -1`). Ranges and choices are field metadata (`setting(...)`),
checked by `check_fields` from the dataclass's `__post_init__`; checks that span fields live in the
same `__post_init__`, once. Library code takes these objects, never an argparse Namespace: only
`config.py` knows the command line, and builds the objects with `from_mapping`.
"""

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """low < value (or <=) and value < high (or <=); None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = False

    def contains(self, value: float) -> bool:
        lo_ok = self.low is None or (value >= self.low if self.low_inclusive else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.high_inclusive else value < self.high)
        return lo_ok and hi_ok

    def describe(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        return f"in {'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}{']' if self.high_inclusive else ')'}"


POSITIVE = Range(0, None, low_inclusive=False)
NON_NEGATIVE = Range(0, None)
AT_LEAST_ONE = Range(1, None)
PROBABILITY = Range(0, 1, high_inclusive=True)
FRACTION = Range(0, 1)  # [0, 1)


def setting(default: Any = None, *, range: Range | None = None, choices: tuple[str, ...] | None = None, hint: str = "") -> Any:
    """A dataclass field with its valid range or choices; `hint` is added to the message of a bad value."""
    metadata = {"range": range, "choices": choices, "hint": hint}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_choice(flag: str, value: str, choices: tuple[str, ...] | list[str], hint: str = "") -> None:
    """ValueError naming `--flag`, the choices and the closest one, unless `value` is one of them."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    raise ValueError(f"--{flag} {value!r} is not one of {', '.join(choices)}" + (f"; did you mean {close[0]!r}?" if close else "") + hint)


def check_fields(obj: Any) -> None:
    """Every float finite, and every field in its declared range or choices (None means unset and passes)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or dataclasses.is_dataclass(value) or isinstance(value, bool):
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"--{f.name} must be a finite number, got {v}")
        if f.metadata.get("choices") is not None:
            check_choice(f.name, value, f.metadata["choices"], f.metadata.get("hint", ""))
        r = f.metadata.get("range")
        if r is not None:
            for v in values:
                if not r.contains(v):
                    raise ValueError(f"--{f.name} must be {r.describe()}, got {v}{f.metadata.get('hint', '')}")


def from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build `cls` from the entries of `values` named like its fields; nested settings dataclasses are built from the same mapping."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
            kwargs[f.name] = from_mapping(f.type, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)
