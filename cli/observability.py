"""Flags: Logger backends, host and device stats, MFU, profiling and the console (`utils.logging.LoggingConfig`)."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "observability", "Where scalars go (console, metrics.jsonl always; the rest below), what is measured at log points, traces, console mode"
    )
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True, help="tensorboard events under --output_dir/tb")
    g.add_argument("--summary_csv", action=argparse.BooleanOptionalAction, default=True, help="--output_dir/summary.csv: one row per epoch, as timm writes it")
    g.add_argument(
        "--wandb", action=argparse.BooleanOptionalAction, default=False, help="also log to Weights & Biases (a resumed run continues the same W&B run)"
    )
    g.add_argument("--wandb_project", default=None, help="W&B project (default: W&B's own, 'uncategorized')")
    g.add_argument("--wandb_entity", default=None, help="W&B team or user (default: your W&B default entity)")
    g.add_argument("--wandb_name", default=None, help="W&B run name (default: W&B's generated one)")
    g.add_argument(
        "--wandb_mode", default="online", help="online | offline (no network: writes --output_dir/wandb/offline-run-*, upload later with wandb sync)"
    )
    g.add_argument(
        "--system_stats",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="host stats (CPU use, RSS, free memory) and device memory at every log point (sys/*, dev/*)",
    )
    g.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="peak TFLOP/s per device for MFU (default: the bf16 dense peak of a known chip: TPU v4/v5e/v5p/v6e, A100, H100, H200; none: no MFU)",
    )
    g.add_argument(
        "--profile_steps",
        default="",
        metavar="A:B",
        help="write a profiler trace of global steps A to B under --output_dir/tb (torch profiler; torch_xla's on XLA)",
    )
    g.add_argument("--log_level", default="info", help="info | debug (debug also shows third-party log lines: TensorFlow, absl, torch_xla, ...)")
