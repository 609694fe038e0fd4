"""Layer decay (`--layer_decay`): which layer id, hence which lr scale, each parameter gets, over our registry and a few timm models.

A block (a conv with its norm and activation, a transformer block) is one layer: all its parameters share one lr scale. The scales are
layer_decay^(n - 1 - i) for the n layer ids timm's `group_parameters` finds from the model's `group_matcher`, and the head is the last layer (scale 1).
"""

import re

import pytest
import timm.models

import models
from models import registry
from optim_factory import make_optimizer

LAYER_DECAY = 0.5
SET_SIZES = {"n_genes": 16, "n_perts": 3, "n_contexts": 2}


def _cnn_block(name: str) -> str:
    """small_cnn: `features` holds (conv, norm, GELU) triples; block b is entries 3b .. 3b + 2."""
    m = re.match(r"^features\.(\d+)\.", name)
    return f"block{int(m.group(1)) // 3}" if m else name.split(".")[0]


def _set_block(name: str) -> str:
    """set_transformer: encoder and the condition embeddings are the stem, `blocks.i` a block; the final norm belongs to the last block, as in timm's ViT."""
    if re.match(r"^(encoder|pert_embed|context_embed)\.", name):
        return "stem"
    m = re.match(r"^(blocks\.\d+)\.", name)
    return m.group(1) if m else name.split(".")[0]


def _prefix_block(*patterns: str):
    """The first of `patterns` that matches the name, else the top-level module (head, norm, ...)."""

    def block(name: str) -> str:
        for pattern in patterns:
            if m := re.match(pattern, name):
                return m.group(0)
        return name.split(".")[0]

    return block


def _convnext_block(name: str) -> str:
    """convnext: `stages.s.blocks.b` a block; a stage's downsample (norm + strided conv) goes with its first block, as timm's matcher says."""
    return _prefix_block(r"^stages\.\d+\.blocks\.\d+\.")(re.sub(r"^stages\.(\d+)\.downsample\.", r"stages.\1.blocks.0.", name))


# name -> (constructor kwargs, block of a parameter name, layer ids: stem + blocks + head)
CASES = {
    "small_cnn": ({"num_classes": 10}, _cnn_block, 7),  # 6 conv blocks (the first one is the stem) + head
    "tiny_cnn": ({"num_classes": 10}, _cnn_block, 5),  # 4 conv blocks + head
    "set_transformer": (SET_SIZES, _set_block, 4),  # stem + 2 blocks + decoder
    "set_transformer_tiny": (SET_SIZES, _set_block, 3),  # stem + 1 block + decoder
    "vit_tiny_patch16_224": ({}, _prefix_block(r"^blocks\.\d+\."), 14),  # embeddings + 12 blocks (final norm with the last) + head
    "convnext_atto": ({}, _convnext_block, 14),  # stem + 12 blocks (each downsample with its stage's first) + head
    "resnet18": ({}, _prefix_block(r"^layer\d\.\d\.", r"^(conv1|bn1)\."), 10),  # stem conv1 + bn1, 8 BasicBlocks, fc
}


def _lr_scales(name: str, kwargs: dict) -> tuple[dict[str, float], int]:
    """Parameter name -> lr scale of its group, and the number of layer ids timm reports for the model."""
    model = models.create_model(name, **kwargs)
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05, layer_decay=LAYER_DECAY)
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    layer_of = timm.models.group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    return {n: scale_of[id(p)] for n, p in model.named_parameters()}, max(layer_of.values()) + 1


def test_every_model_of_our_registry_is_covered():
    # Models that tests register for themselves (tests/fault_models.py) are not the project's.
    ours = {name for name, fn in registry.get_registered().items() if fn.__module__.startswith("models.")}
    assert ours <= set(CASES), "add the new model to CASES"
    assert ours >= {"small_cnn", "set_transformer"}


@pytest.mark.parametrize("name", list(CASES))
def test_one_lr_scale_per_block_and_scale_1_for_the_head(name):
    kwargs, block_of, n_layers = CASES[name]
    scales, n_timm = _lr_scales(name, kwargs)
    assert n_timm == n_layers
    by_block: dict[str, set[float]] = {}
    for param_name, scale in scales.items():
        by_block.setdefault(block_of(param_name), set()).add(scale)
    split = {block: sorted(s) for block, s in by_block.items() if len(s) > 1}
    assert not split, f"blocks whose parameters get different lr scales: {split}"
    assert sorted(set(scales.values())) == pytest.approx([LAYER_DECAY**k for k in reversed(range(n_layers))])
    head = {"small_cnn": "head.", "tiny_cnn": "head.", "resnet18": "fc."}.get(name, "decoder." if name.startswith("set_") else "head.")
    assert {s for n, s in scales.items() if n.startswith(head)} == {1.0}


def test_small_cnn_stem_conv_and_its_norm_share_the_stem_scale():
    """The issue: each conv and its norm had their own id (12 ids), so --layer_decay 0.5 scaled the stem's lr by 0.5^11 = 0.0005; now 0.5^6 = 1/64."""
    scales, _ = _lr_scales("small_cnn", {"num_classes": 10})
    assert scales["features.0.weight"] == scales["features.1.weight"] == scales["features.1.bias"] == 0.5**6
    assert scales["features.15.weight"] == scales["features.16.weight"] == 0.5  # the last conv block, just below the head


def test_small_cnn_coarse_groups_are_stages():
    model = models.create_model("small_cnn", num_classes=10)
    layer_of = timm.models.group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    # stem block, the rest of stage 0, stages 1 and 2 (two conv blocks each), head
    assert [layer_of[f"features.{i}.weight"] for i in (0, 1, 3, 4, 6, 9, 12, 15)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert layer_of["head.weight"] == 4
