"""Flags: Speed options of the torch runtimes (cpu, cuda), as timm's train.py offers them; each is an error where it cannot apply (utils/speed.py)."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "speed (cpu / cuda)",
        "timm train.py's speed options; bf16 autocast is --precision bf16. Each one stops at start-up with one line where it cannot apply (XLA, cpu, "
        "the model or the GPU)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile (Inductor) the step's forward and loss, with their backward; the update stays eager (--opt_fused makes it one kernel). "
        "An error on XLA, which compiles every step as one graph already",
    )
    g.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="NHWC memory order for the model's 4-D weights and the [b, c, h, w] image batches (image models only; not on XLA)",
    )
    g.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="CUDA float32 matmuls (and cuDNN convolutions) in TF32 on Ampere or newer GPUs (cuda only)",
    )
    g.add_argument(
        "--pin_memory",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pin host batches in a background thread and copy them to the GPU on a side stream, one batch ahead (cuda only)",
    )
    g.add_argument(
        "--opt_fused",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch's fused optimizer kernel (adamw, adam, sgd, momentum, nesterov, adagrad) on cpu or cuda parameters",
    )
