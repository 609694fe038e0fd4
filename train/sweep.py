"""Sweeps for `python -m train.slurm --sweep sweep.yaml`: a YAML grid over main.py's flags, one run per point, each checked by main.py's own parser.

    grid:                          # flag name (as in args.yaml) -> the values to try; the runs are every combination
      lr: [0.001, 0.003]
      weight_decay: [0.05, 0.1]
    name: "lr{lr}_wd{weight_decay}"  # optional: the run's name (its directory under --output_dir) from the point's values

Points come in the order of the file (the last key varies fastest). A point's flags go after the launcher's `-- FLAGS`, so they override them and a
`--config` recipe's values. Values become flags as main.py reads them: `--lr 0.001`; a list for a flag that takes several values (`opt_betas: [[0.9, 0.95]]`
is `--opt_betas 0.9 0.95`); true/false for on/off flags (`--mixup_switch` / `--no-...`); a mapping for `model_kwargs` (passed as JSON). Without `name` a
run is named by its values (`lr0.001_weight_decay0.05`). Every point is parsed by `config.parse_settings` before anything is submitted: a bad one stops
the launch with its name and main.py's own error line.
"""

import argparse
import contextlib
import dataclasses
import difflib
import io
import itertools
import json
import os
import re
import string

import yaml

import config

SWEEP_KEYS = ("grid", "name")
LAUNCHER_FLAGS = ("output_dir", "resume")  # the launcher sets both: one directory per run, resumed with --resume auto
NOT_SWEPT = ("help", "list_models", *LAUNCHER_FLAGS)
_NAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._+=-]+")


class SweepError(ValueError):
    """A sweep file or point that cannot run: the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One combination of the grid: its name, its values, and the flags that set them."""

    name: str
    values: dict
    flags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Run:
    """One main.py run of a launch: its name, its own output directory, and its whole command line (`--output_dir` and `--resume auto` included)."""

    name: str
    run_dpath: str
    argv: tuple[str, ...]
    settings: config.Settings


def load_sweep(fpath: str) -> dict:
    """The sweep file's mapping, with `grid` a non-empty mapping of lists (else a SweepError naming the key)."""
    if not os.path.isfile(fpath):
        raise SweepError(f"--sweep {fpath!r} does not exist; pass a YAML file with a `grid:` mapping")
    try:
        with open(fpath, encoding="utf-8") as fd:
            sweep = yaml.safe_load(fd)
    except yaml.YAMLError as e:
        raise SweepError(f"--sweep {fpath!r} is not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("grid"), dict) or not sweep["grid"]:
        raise SweepError(f"--sweep {fpath!r} needs a `grid:` mapping of flag names to lists of values, e.g. grid: {{lr: [0.001, 0.003]}}")
    for key in sweep:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            raise SweepError(
                f"unknown key {key!r} in --sweep {fpath!r}" + (f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(SWEEP_KEYS)}")
            )
    for key, values in sweep["grid"].items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid key {key!r} in {fpath} has value {values!r}; give a non-empty list of values, e.g. [{values!r}]")
    if "name" in sweep and not isinstance(sweep["name"], str):
        raise SweepError(f"name in {fpath} must be a string like 'lr{{lr}}', got {sweep['name']!r}")
    return sweep


def get_flag_args(action: argparse.Action, key: str, value) -> list[str]:
    """The command-line words that set flag `key` to `value` as main.py's parser reads them."""
    flag = f"--{key}"
    if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise SweepError(f"grid key {key!r} has value {value!r}; {flag} is on/off: use true or false")
        if isinstance(action, argparse._StoreTrueAction):
            return [flag] if value else []
        return [flag if value else f"--no-{key}"]
    if isinstance(value, dict):
        if key not in config.MAPPING_FLAGS:
            raise SweepError(f"grid key {key!r} has a mapping value {value!r}; only {', '.join(config.MAPPING_FLAGS)} take one")
        return [flag, json.dumps(value)]
    if value is None or isinstance(value, bool):
        raise SweepError(f"grid key {key!r} has value {value!r}; give a value of {flag}'s type (leave the key out to keep the default)")
    if isinstance(value, list):
        if action.nargs in (None, "?"):
            raise SweepError(f"grid key {key!r} has value {value!r}, a list, but {flag} takes one value")
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def get_point_name(template: str | None, values: dict) -> str:
    """The run's name: the template filled with the point's values, or `key value` pairs; only characters safe in a directory name."""

    def show(v) -> str:
        return "-".join(show(x) for x in v) if isinstance(v, list) else (json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v))

    if template is None:
        name = "_".join(f"{k}{show(v)}" for k, v in values.items())
    else:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            raise SweepError(f"name {template!r} is not a format string ({e}); write grid keys in braces, e.g. 'lr{{lr}}'") from None
        unknown = [f for f in fields if f not in values]
        if unknown:
            raise SweepError(f"name {template!r} uses {{{unknown[0]}}}, which is not a grid key; the keys are {', '.join(values)}")
        try:  # numbers stay numbers, so '{lr:.0e}' works; lists and mappings become text
            name = template.format(**{k: v if isinstance(v, int | float | str) else show(v) for k, v in values.items()})
        except (ValueError, TypeError) as e:
            raise SweepError(f"name {template!r} does not fit the values {values} ({e})") from None
    name = _NAME_UNSAFE_RE.sub("-", name).strip("-.")
    if not name:
        raise SweepError(f"name {template!r} gives an empty run name")
    return name


def expand(sweep: dict) -> list[Point]:
    """Every combination of the grid, in file order, each with a unique name (else a SweepError naming both points)."""
    actions = {a.dest: a for a in config.get_args_parser()._actions}
    grid = sweep["grid"]
    for key in grid:
        if key in NOT_SWEPT or key not in actions:
            close = difflib.get_close_matches(str(key), [k for k in actions if k not in NOT_SWEPT], n=1)
            why = "the launcher sets it (one directory per run, --resume auto)" if key in LAUNCHER_FLAGS else "it is not a flag of main.py"
            raise SweepError(f"grid key {key!r}: {why}" + (f"; did you mean {close[0]!r}?" if close and key not in LAUNCHER_FLAGS else ""))
    points, seen = [], {}
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        name = get_point_name(sweep.get("name"), values)
        if name in seen:
            raise SweepError(f"sweep points {seen[name]} and {values} both get the run name {name!r}; give `name:` a placeholder for every grid key")
        seen[name] = values
        flags = tuple(w for k, v in values.items() for w in get_flag_args(actions[k], k, v))
        points.append(Point(name=name, values=values, flags=flags))
    return points


def parse_point(argv: list[str]) -> config.Settings:
    """`config.parse_settings(argv)`, with main.py's usage error turned into a ValueError holding its `error:` line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return config.parse_settings(argv)
    except SystemExit:
        lines = [line.split("error: ", 1)[1] for line in err.getvalue().splitlines() if "error: " in line]
        raise ValueError(lines[-1] if lines else err.getvalue().strip() or "main.py's parser rejected it") from None


def drop_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` and `flag=VALUE` (a flag that takes one value)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def make_runs(base_argv: list[str], points: list[Point] | None, root_dpath: str) -> list[Run]:
    """One run per point (one run for no sweep), each in its own directory under `root_dpath`, each command line parsed by main.py's parser."""
    if any(a == "--resume" or a.startswith("--resume=") for a in base_argv):
        raise SweepError("--resume: the launcher resumes every run with --resume auto from its own directory; to start from weights use --init_checkpoint")
    base_argv = drop_flag(base_argv, "--output_dir")  # the root: each run gets its own below
    runs = []
    for point in points or [None]:
        name = point.name if point else os.path.basename(root_dpath.rstrip("/")) or "run"
        run_dpath = os.path.join(root_dpath, point.name) if point else root_dpath
        argv = [*base_argv, *(point.flags if point else ()), "--output_dir", run_dpath, "--resume", "auto"]
        where = f"sweep point {name!r} ({' '.join(point.flags)})" if point else "main.py flags"
        try:
            settings = parse_point(argv)
        except ValueError as e:
            raise SweepError(f"{where}: {e}") from None
        lost = [k for k, v in (point.values.items() if point else ()) if isinstance(v, bool) and settings.flags.get(k) != v]
        if lost:  # an on-only flag (store_true) set to false cannot switch off what the flags before it switched on
            raise SweepError(
                f"{where}: grid key {lost[0]!r} is {point.values[lost[0]]} but the run would have {settings.flags.get(lost[0])}; drop --{lost[0]} after --"
            )
        runs.append(Run(name=name, run_dpath=run_dpath, argv=tuple(argv), settings=settings))
    return runs
