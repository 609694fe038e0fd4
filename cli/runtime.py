"""Flags: Devices, parallelism, logging and checkpoints."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | xla")
    g.add_argument("--parallel", default="auto", help="auto | none | spmd | fsdp | pjrt | ddp (auto: spmd on TPU, ddp under torchrun, else none)")
    g.add_argument("--fsdp", action="store_true", help="shorthand for --parallel fsdp (FSDPv2 over the SPMD mesh, for models that do not fit per chip)")
    g.add_argument("--xla_cache_dir", default=None, help="persistent XLA compile cache (pays on TPU)")
    g.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast on XLA, CUDA (Ampere or newer) and cpu; no loss scaler)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_steps_per_epoch", type=int, default=None, help="cap the steps per epoch (smoke runs)")
    g.add_argument(
        "--smoke",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="big_vision's runlocal: run the recipe as it is on a tiny model of its family, embedded data, batch 8 and 2 steps (changes are logged)",
    )

    g = p.add_argument_group("logging / checkpoints")
    g.add_argument("--output_dir", default="output/default", help="checkpoints, args.yaml, tensorboard events, metrics.jsonl")
    g.add_argument("--log_every", type=int, default=20, help="steps between progress lines")
    g.add_argument("--eval_every_epochs", type=int, default=5)
    g.add_argument("--save_every_epochs", type=int, default=5)
    g.add_argument("--save_every_steps", type=int, default=0, help="also checkpoint every N steps (0 = off)")
    g.add_argument("--keep_last", type=int, default=3, help="checkpoints to keep")
    g.add_argument("--resume", default="", help="'auto' (newest loadable checkpoint in --output_dir) or a checkpoint path")
