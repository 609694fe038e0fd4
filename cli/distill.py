"""Flags: Knowledge distillation and model EMA."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distillation / model EMA")
    g.add_argument(
        "--kd",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="distil from a frozen teacher (needs --teacher_arch, --teacher_path, --distillation_type soft|hard)",
    )
    g.add_argument(
        "--distillation_type", default="none", help="none | soft (T^2 KL to the teacher's softened distribution) | hard (CE to the teacher's argmax)"
    )
    g.add_argument("--teacher_arch", default=None, help="teacher model name (timm or models/)")
    g.add_argument("--teacher_path", default=None, help="teacher weights: our checkpoint-*.pt, a timm-style state dict or .safetensors")
    g.add_argument("--teacher_img_size", type=int, default=None, help="teacher img_size (default: the one stored in our checkpoint, else the model's)")
    g.add_argument("--teacher_dtype", default="fp32", help="fp32 | bf16 (teacher weights and forward in bf16: half the memory and faster on TPU)")
    g.add_argument("--kd_alpha", type=float, default=0.5, help="loss = (1 - alpha) * CE(labels) + alpha * KD")
    g.add_argument("--kd_temperature", type=float, default=1.0, help="softmax temperature T of the soft KD loss")
    g.add_argument(
        "--kd_scaling",
        default="batchmean_t2",
        help="batchmean_t2 (KL summed over classes, batch mean, x T^2) | deit (DeiT's sum / numel: the same divided by the class count)",
    )
    g.add_argument(
        "--model_ema",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep an EMA of the weights (updated inside the train step, saved as model_ema)",
    )
    g.add_argument("--model_ema_decay", type=float, default=0.9998, help="EMA decay per step (the average spans about 1 / (1 - decay) steps)")
    g.add_argument("--model_ema_eval", action=argparse.BooleanOptionalAction, default=False, help="also evaluate the EMA weights (logged as eval_ema/*)")
