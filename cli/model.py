"""Flags: The model: a timm or models/ name and its constructor options."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="small_cnn", help="timm model name or one registered in models/")
    g.add_argument("--num_classes", type=int, default=None, help="default: from the dataset")
    g.add_argument("--drop_rate", type=float, default=None)
    g.add_argument("--drop_path_rate", type=float, default=None)
    g.add_argument("--img_size", type=int, default=None, help="passed to models that take it (ViTs)")
    g.add_argument("--init_checkpoint", default=None, help="start from these weights (our checkpoint, timm state dict or .safetensors)")
    g.add_argument("--head_init_bias", type=float, default=None, help="start every classifier bias at this value, e.g. -6.9 with --loss sigmoid_xent")
    g.add_argument(
        "--model_kwargs",
        default=None,
        metavar="MAPPING",
        help="more constructor arguments as YAML/JSON, e.g. '{global_pool: avg, class_token: false, pos_embed: sincos}' (checked against the model)",
    )
