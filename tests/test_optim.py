"""Optimizer groups and per-step schedules."""

import math

import pytest
import torch

import models
from optim_factory import Schedule, make_optimizer


def test_no_weight_decay_on_norms_and_biases():
    model = models.create_model("small_cnn", num_classes=10)
    opt = make_optimizer(model, "adamw", 1e-3, 0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1), name


def test_unknown_optimizer_suggests_a_name():
    model = models.create_model("tiny_cnn", num_classes=10)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamww'.*adamw"):
        make_optimizer(model, "adamww", 1e-3, 0.05)


def test_warmup_then_cosine():
    s = Schedule(total_steps=110, lr=1.0, warmup_steps=10, warmup_lr=0.0, min_lr=0.1)
    assert s.lr_at(0) == pytest.approx(0.1), "first warmup step is lr/warmup, never exactly 0"
    assert s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert 0.1 < s.lr_at(109) < 0.11


def test_schedule_writes_lr_and_wd_into_groups():
    model = models.create_model("tiny_cnn", num_classes=10)
    opt = make_optimizer(model, "sgd", 0.1, 1e-4)
    s = Schedule(total_steps=100, lr=0.1, weight_decay=1e-4, weight_decay_end=1e-2)
    s.apply(opt, 100)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(s.lr_at(100))
        assert g["weight_decay"] == (pytest.approx(1e-2) if g["wd_scale"] else 0.0)
    assert isinstance(opt, torch.optim.SGD)
