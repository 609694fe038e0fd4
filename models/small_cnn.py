"""A small ConvNet for tiny images (digits, CIFAR-sized smoke runs) and fast XLA tests."""

import torch
from torch import nn

from models.registry import register_model


class SmallCNN(nn.Module):
    """Conv-BN-GELU stages with stride-2 downsampling, global average pool, linear head.

    It follows timm's conventions (`num_classes`, `in_chans`, `forward_features`, `forward_head`,
    `reset_classifier`, `no_weight_decay`), so the engine and optimizer factory treat it like any
    timm backbone.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128), drop_rate: float = 0.0, norm: str = "batch"):
        super().__init__()
        assert norm in ("batch", "group"), f"norm must be batch or group, got {norm!r}"
        # GroupNorm makes every example independent of its batch: data-parallel runs then equal one big batch exactly.
        make_norm = nn.BatchNorm2d if norm == "batch" else (lambda c: nn.GroupNorm(min(8, c), c))
        layers, c_in = [], in_chans
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), make_norm(c_out), nn.GELU()]
            layers += [nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), make_norm(c_out), nn.GELU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c_in, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.features(x_bchw)

    def forward_head(self, x_bchw: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x_bd = self.drop(x_bchw.mean(dim=(2, 3)))
        return x_bd if pre_logits else self.head(x_bd)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x_bchw))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer decay: one per conv block (conv + norm + GELU, 3 entries of `features`), one per stage (2 blocks) if `coarse`.

        The stem is the first block; the head, matched by nothing, gets the last id (LR scale 1). Non-capturing groups: a captured module index
        would give the conv and its norm different ids.
        """
        n_blocks = len(self.features) // 3
        blocks = [(rf"^features\.(?:{3 * b}|{3 * b + 1}|{3 * b + 2})\.", (b // 2 if coarse else b,)) for b in range(1, n_blocks)]
        return {"stem": r"^features\.[0-2]\.", "blocks": blocks}


@register_model
def small_cnn(**kwargs) -> SmallCNN:
    return SmallCNN(**kwargs)


@register_model
def tiny_cnn(**kwargs) -> SmallCNN:
    """Two narrow stages: compiles in seconds on PJRT CPU, for XLA tests."""
    return SmallCNN(widths=(16, 32), **kwargs)
