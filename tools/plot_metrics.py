"""Curves of one or several runs from their metrics.jsonl into one PNG: loss, learning rate, eval accuracy and throughput.

  python -m tools.plot_metrics output/default                       # -> output/default/metrics.png
  python -m tools.plot_metrics output/run_a output/run_b --out ab.png --x epoch

Each run is an output dir (or its metrics.jsonl) and gets one colour in every panel, labelled by its dir name. Panels: train
loss (and eval loss, dashed), learning rate, eval accuracy (every `eval/*acc*` key: top-1 solid, top-5 dotted, named eval sets
each with its own line), and examples/s (train/examples_per_s, with MFU in % on a second axis when the run logged it).
`--keys` adds one panel per extra key (any name in metrics.jsonl, e.g. sys/rss_gib or perf/data_wait_pct). A panel with no data
in any run says so instead of staying blank.
"""

import argparse
import json
import os
import sys

from cli.help import ArgumentParser

PANELS = (
    ("loss", ("train/loss", "eval/loss"), "loss"),
    ("learning rate", ("train/lr",), "lr"),
    ("eval accuracy (%)", ("eval/acc1", "eval/acc5"), "acc"),
    ("throughput (examples/s)", ("train/examples_per_s",), "throughput"),
)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("python -m tools.plot_metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="output dirs (or metrics.jsonl files) of the runs to compare")
    p.add_argument("--out", default=None, help="PNG to write (default: metrics.png in the first run's dir)")
    p.add_argument("--x", default="step", choices=("step", "epoch"), help="x axis: global step, or epoch (train/epoch, fractional)")
    p.add_argument("--keys", nargs="+", default=[], metavar="KEY", help="extra panels, one per metrics.jsonl key")
    p.add_argument("--title", default=None, help="figure title (default: the run names)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of the PNG")
    return p


def get_jsonl_fpath(run: str) -> str:
    fpath = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
    if not os.path.isfile(fpath):
        raise ValueError(f"{run!r} has no metrics.jsonl; pass a run's --output_dir or its metrics.jsonl")
    return fpath


def read_records(fpath: str) -> list[dict]:
    """Every record of a metrics.jsonl; a resumed run's repeated steps keep their last value (the run that went on from there)."""
    records = []
    with open(fpath, encoding="utf-8") as fd:
        for n, line in enumerate(fd, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if n > 1:  # a run killed mid-write leaves a cut last line
                    continue
                raise ValueError(f"{fpath} is not a metrics.jsonl (line {n} is not JSON)") from None
    return records


def get_series(records: list[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of `key`; x "epoch" uses the latest train/epoch seen at or before each record (eval records carry none)."""
    points: dict[float, float] = {}
    epoch = 0.0
    for r in records:
        epoch = r.get("train/epoch", epoch)
        if key in r and r[key] is not None:
            points[r["step"] if x == "step" else epoch] = float(r[key])
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def get_eval_acc_keys(records: list[dict]) -> list[str]:
    keys = sorted({k for r in records for k in r if k.startswith("eval") and "acc" in k.rpartition("/")[2] and not k.endswith("n_examples")})
    return keys


def draw(runs: list[tuple[str, list[dict]]], args: argparse.Namespace) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(PANELS) + [(key, (key,), "key") for key in args.keys]
    n_cols = 2
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(6.4 * n_cols, 3.6 * n_rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys, kind) in zip(axes.flat, panels, strict=False):
        drawn = 0
        for i, (name, records) in enumerate(runs):
            colour = colours[i % len(colours)]
            run_keys = get_eval_acc_keys(records) if kind == "acc" else keys
            for key in run_keys:
                xs, ys = get_series(records, key, args.x)
                if not xs:
                    continue
                style = ":" if key.endswith("acc5") else ("--" if key.startswith("eval/") and kind == "loss" else "-")
                ax.plot(xs, ys, style, color=colour, marker="o" if len(xs) <= 20 else None, markersize=3, label=f"{name}: {key}")
                drawn += 1
            if kind == "throughput":
                drawn += _draw_mfu(ax, records, args.x, colour, name)
        if kind == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set_title(title)
        ax.set_xlabel(args.x)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {', '.join(keys) if kind != 'acc' else 'eval accuracy'} in any run", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(args.title or " vs ".join(name for name, _ in runs))
    fig.tight_layout()
    out = args.out or os.path.join(os.path.dirname(get_jsonl_fpath(args.runs[0])) or ".", "metrics.png")
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    return out


def _draw_mfu(ax, records: list[dict], x: str, colour: str, name: str) -> int:
    xs, ys = get_series(records, "perf/mfu_pct", x)
    if not xs:
        return 0
    twin = ax.twinx()
    twin.plot(xs, ys, "-.", color=colour, alpha=0.6, label=f"{name}: mfu %")
    twin.set_ylabel("MFU (%)")
    twin.legend(fontsize=7, loc="lower right")
    return 1


def get_run_name(run: str) -> str:
    path = os.path.abspath(run)
    return os.path.basename(os.path.dirname(path) if os.path.isfile(path) else path)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        runs = [(get_run_name(run), read_records(get_jsonl_fpath(run))) for run in args.runs]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = draw(runs, args)
    n_points = sum(len(r) for _, r in runs)
    print(f"wrote {out} ({len(runs)} run(s), {n_points} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
