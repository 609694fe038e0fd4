"""Flags: Optimizer, schedule and batch-level augmentation."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("--batch_size", type=int, default=64, help="global batch size (all processes together)")
    g.add_argument("--eval_batch_size", type=int, default=None, help="global eval batch size (default: --batch_size)")
    g.add_argument("--opt", default="adamw", help="any timm optimizer name (adamw, sgd, lamb, lion, ...)")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min_lr", type=float, default=1e-5)
    g.add_argument("--warmup_epochs", type=float, default=None, help="linear warm-up from --warmup_lr to --lr (default: 2 epochs, at most 20%% of --epochs)")
    g.add_argument("--warmup_steps", type=int, default=None, help="the warm-up in steps instead of --warmup_epochs (big_vision's schedule.warmup_steps)")
    g.add_argument("--warmup_lr", type=float, default=1e-5, help="the LR of the first warm-up step's start")
    g.add_argument("--sched", default="cosine", help="decay after the warm-up, to --min_lr at the last step: cosine | linear")
    g.add_argument("--weight_decay", type=float, default=0.05)
    g.add_argument("--weight_decay_end", type=float, default=None, help="cosine WD schedule end value (default: constant WD)")
    g.add_argument(
        "--wd_semantics",
        default="torch",
        help=(
            "torch: --weight_decay is the optimizer's own (AdamW decays by lr(t) x wd, SGD adds wd x p to the gradient) | "
            "big_vision: decoupled, each step p -= wd x lr(t) / lr x p (big_vision's wd), for any --opt"
        ),
    )
    g.add_argument(
        "--momentum", type=float, default=None, help="for optimizers with momentum (sgd, rmsprop, lars, ...; default: theirs, 0.9); an error for others"
    )
    g.add_argument("--opt_betas", type=float, nargs="+", default=None, metavar="BETA", help="betas of Adam-like optimizers (default: the optimizer's)")
    g.add_argument("--opt_eps", type=float, default=None, help="eps of optimizers that take one (default: the optimizer's)")
    g.add_argument("--layer_decay", type=float, default=None, help="layer-wise LR decay: the LR of layer i of n is scaled by layer_decay^(n - 1 - i)")
    g.add_argument("--clip_grad", type=float, default=0.0, help="max global grad norm; 0 = no clipping")
    g.add_argument("--label_smoothing", type=float, default=0.0, help="mix the targets with the uniform distribution by this much")
    g.add_argument(
        "--loss",
        default="softmax_xent",
        help="classification loss: softmax_xent | sigmoid_xent (big_vision's: binary cross-entropy per class, summed over classes, batch mean)",
    )

    g = p.add_argument_group(
        "augmentation",
        "Mixup/CutMix on the host batch before the device transfer (fixed shapes: `labels` float [b, n_classes]); --label_smoothing applies on top, once",
    )
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha; > 0 turns mixup on")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha; > 0 turns cutmix on")
    g.add_argument(
        "--cutmix_minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"), help="cutmix box sides drawn in [MIN, MAX) x image side (turns cutmix on)"
    )
    g.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixing a batch (or element, or pair)")
    g.add_argument("--mixup_switch_prob", type=float, default=0.5, help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--mixup_mode", default="batch", help="batch | pair | elem: one draw per batch, per pair (i, b-1-i), or per element")
