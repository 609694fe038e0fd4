"""Flags: layer activations for sparse-autoencoder work (captured in the compiled eval step, written as sharded safetensors)."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("activations")
    g.add_argument(
        "--extract_layers",
        default=None,
        metavar="NAME,NAME",
        help="module names of model.named_modules() (e.g. blocks.0,blocks.5) whose outputs are written; without --extract_only, after training",
    )
    g.add_argument("--activations_dir", default=None, help="where the shards go, local or gs:// (default OUTPUT_DIR/activations); a rerun resumes there")
    g.add_argument(
        "--extract_only",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="no training: load --resume auto|PATH or --init_checkpoint, make one pass over --extract_split, write, exit",
    )
    g.add_argument("--extract_split", default="eval", help="eval | train (in order, eval pp, padded and masked) | NAME of one of --tfds_eval_splits")
    g.add_argument("--extract_tokens", default="all", help="all | cls | mean | first:K | random:K (K positions drawn once from --seed), chosen on the device")
    g.add_argument("--extract_dtype", default="bf16", help="bf16 | fp16 | fp32: cast on the device before the copy")
    g.add_argument("--extract_rows_per_shard", type=int, default=8192, help="examples per shard file")
    g.add_argument("--extract_queue", type=int, default=4, help="steps in flight to the writer thread (device memory they pin); 0: synchronous copies")
    g.add_argument("--extract_max_examples", type=int, default=None, help="at most this many examples in all (an even share per process)")
