"""Optimizer groups and per-step schedules."""

import math

import pytest
import torch
from torch import nn

import models
from optim_factory import OptimConfig, Schedule, get_momentum_optimizers, make_optimizer


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


# --- weight decay semantics: one or two steps against hand math ---------------------------------------------------------------------------------------


class _Tiny(nn.Module):
    """One 2-D weight (decays) and one bias (1-D: never decays), in float64 so the hand math holds to 1e-12."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))


GRAD_W, GRAD_B = [[0.3, -0.4]], [0.2]
# Peak lr 0.1 after 2 warm-up steps from 0: lr(0) = 0.05 (schedule multiplier 0.5), lr(1) = 0.1 (multiplier 1); wd 0.2.
WARMUP = {"total_steps": 10, "lr": 0.1, "warmup_steps": 2, "warmup_lr": 0.0, "min_lr": 0.0, "weight_decay": 0.2}


def _two_steps(opt: str, wd_semantics: str, grad_w=GRAD_W, schedule: dict = WARMUP, **kwargs) -> list[tuple[list[float], float]]:
    """(w, b) after each of two steps with the same gradient, the schedule written before each step as the engine does."""
    model = _Tiny()
    optimizer = make_optimizer(model, opt, schedule["lr"], schedule["weight_decay"], wd_semantics=wd_semantics, **kwargs)
    s = Schedule(**schedule, wd_semantics=wd_semantics)
    out = []
    for step in range(2):
        s.apply(optimizer, step)
        model.w.grad = torch.tensor(grad_w, dtype=torch.float64)
        model.b.grad = torch.tensor(GRAD_B, dtype=torch.float64)
        optimizer.step()
        out.append((model.w.detach().flatten().tolist(), model.b.item()))
    return out


# AdamW with a constant gradient: mhat = g, vhat = g^2 every step, so the update is lr(t) x sign(g) (up to eps = 1e-8).
#   torch:      w <- w (1 - lr(t) wd) - lr(t) sign(g):  w1 = [1 x 0.99 - 0.05, -2 x 0.99 + 0.05] = [0.94, -1.93],  w2 = [0.94 x 0.98 - 0.1, -1.93 x 0.98 + 0.1]
#   big_vision: w <- w (1 - m(t) wd) - lr(t) sign(g):   w1 = [1 x 0.9 - 0.05, -2 x 0.9 + 0.05] = [0.85, -1.75],    w2 = [0.85 x 0.8 - 0.1, -1.75 x 0.8 + 0.1]
#   the bias never decays: b1 = 0.5 - 0.05 = 0.45, b2 = 0.45 - 0.1 = 0.35.
# timm's sgd (Nesterov) with momentum 0.5: buf <- 0.5 buf + g', w <- w - lr(t) (g' + 0.5 buf).
#   torch (g' = g + wd w):  w1 = w0 - 0.05 x 1.5 x [0.5, -0.8] = [0.9625, -1.94];  g' = [0.4925, -0.788], buf = [0.7425, -1.188],
#                           w2 = w1 - 0.1 x [0.86375, -1.382] = [0.876125, -1.8018]
#   big_vision (g' = g):    w1 = [0.9, -1.8] - 0.05 x 1.5 x [0.3, -0.4] = [0.8775, -1.77];  buf = [0.45, -0.6],
#                           w2 = 0.8 x w1 - 0.1 x [0.525, -0.7] = [0.702 - 0.0525, -1.416 + 0.07] = [0.6495, -1.346]
#   bias: b1 = 0.5 - 0.05 x 0.3 = 0.485, b2 = 0.485 - 0.1 x (0.2 + 0.5 x 0.3) = 0.45.
HAND_MATH = [
    ("adamw", "torch", {}, [([0.94, -1.93], 0.45), ([0.8212, -1.7914], 0.35)]),
    ("adamw", "big_vision", {}, [([0.85, -1.75], 0.45), ([0.58, -1.3], 0.35)]),
    ("sgd", "torch", {"momentum": 0.5}, [([0.9625, -1.94], 0.485), ([0.876125, -1.8018], 0.45)]),
    ("sgd", "big_vision", {"momentum": 0.5}, [([0.8775, -1.77], 0.485), ([0.6495, -1.346], 0.45)]),
]


@pytest.mark.parametrize("opt,wd_semantics,kwargs,expected", HAND_MATH, ids=[f"{o}-{w}" for o, w, _, _ in HAND_MATH])
def test_two_warmup_steps_match_hand_math(opt, wd_semantics, kwargs, expected):
    for (w, b), (w_expected, b_expected) in zip(_two_steps(opt, wd_semantics, **kwargs), expected, strict=True):
        assert w == pytest.approx(w_expected, abs=1e-7)  # AdamW's eps moves the 7th digit
        assert b == pytest.approx(b_expected, abs=1e-7)


def test_big_vision_wd_is_not_scaled_by_the_lr():
    """The issue's recipe: wd 1e-4 at lr 1e-3. A zero gradient isolates the decay: big_vision shrinks w by 1e-4 a step at the peak, torch by lr x wd = 1e-7."""
    peak = {"total_steps": 10, "lr": 1e-3, "weight_decay": 1e-4}  # no warm-up: multiplier 1 at step 0
    bv = _two_steps("adamw", "big_vision", grad_w=[[0.0, 0.0]], schedule=peak)
    torch_sem = _two_steps("adamw", "torch", grad_w=[[0.0, 0.0]], schedule=peak)
    assert bv[0][0] == pytest.approx([1.0 - 1e-4, -2.0 * (1 - 1e-4)], abs=1e-12)
    assert torch_sem[0][0] == pytest.approx([1.0 - 1e-7, -2.0 * (1 - 1e-7)], abs=1e-12)
    # The recipes' translation for AdamW (vit_s16_i1k.yaml: weight_decay 0.1 = 1e-4 / lr under torch) is the same run in warm-up too.
    warm = {"total_steps": 10, "lr": 1e-3, "warmup_steps": 4, "warmup_lr": 0.0}
    same_bv = _two_steps("adamw", "big_vision", schedule={**warm, "weight_decay": 1e-4})
    same_torch = _two_steps("adamw", "torch", schedule={**warm, "weight_decay": 0.1})
    for (w_bv, _), (w_torch, _) in zip(same_bv, same_torch, strict=True):
        assert w_bv == pytest.approx(w_torch, abs=1e-12)


def test_decay_follows_the_lr_multiplier_in_warmup_and_cosine():
    bv = Schedule(**WARMUP, wd_semantics="big_vision")
    assert [bv.decay_at(step) for step in (0, 1, 6)] == pytest.approx(
        [0.1, 0.2, 0.1]
    )  # wd x lr(t) / lr: 0.2 x 0.5, 0.2 x 1, 0.2 x 0.05 / 0.1 (cosine midpoint)
    assert [Schedule(**WARMUP).decay_at(step) for step in (0, 1, 6)] == [0.2, 0.2, 0.2], "torch: the optimizer multiplies by lr(t) itself"
    assert "decoupled, times lr(t) / 0.1 (big_vision semantics)" in bv.describe(5)


def test_big_vision_decay_respects_no_decay_and_layer_decay_groups():
    """Every group's own decay is 0 (never decays twice); the decaying groups get wd x m(t) whatever their layer-decay lr scale (big_vision's lr_mults
    scale only the gradient step), norms and biases none."""
    model = models.create_model("tiny_cnn", num_classes=10)
    optimizer = make_optimizer(model, "adamw", 0.1, 0.2, layer_decay=0.5, wd_semantics="big_vision")
    Schedule(**WARMUP, wd_semantics="big_vision").apply(optimizer, 0)
    assert len({g["lr_scale"] for g in optimizer.param_groups}) == 5
    for g in optimizer.param_groups:
        assert g["weight_decay"] == 0.0
        assert g["decoupled_wd"] == pytest.approx(0.1 if g["wd_scale"] else 0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update of a zero gradient is 0: what moves is the decay alone
    optimizer.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n] * (0.9 if p.ndim > 1 else 1.0)), n


def test_schedule_semantics_decides_after_a_resume_across_semantics():
    """An optimizer restored from a torch-semantics checkpoint and run with big_vision (or the reverse) takes the run's semantics at the first apply."""
    model = models.create_model("tiny_cnn", num_classes=10)
    optimizer = make_optimizer(model, "adamw", 0.1, 0.2)
    decays = [0.2 * g["wd_scale"] for g in optimizer.param_groups]
    assert sorted(decays) == [0.0, 0.2]
    Schedule(**WARMUP, wd_semantics="big_vision").apply(optimizer, 1)  # multiplier 1 at the end of warm-up
    assert [(g["weight_decay"], g["decoupled_wd"]) for g in optimizer.param_groups] == [(0.0, pytest.approx(d)) for d in decays]
    Schedule(**WARMUP).apply(optimizer, 1)
    assert [(g["weight_decay"], g["decoupled_wd"]) for g in optimizer.param_groups] == [(pytest.approx(d), 0.0) for d in decays]


def test_wd_semantics_is_a_checked_choice():
    with pytest.raises(ValueError, match=r"^--wd_semantics 'bigvision' is not one of torch, big_vision; did you mean 'big_vision'\?"):
        OptimConfig(wd_semantics="bigvision")
    cfg = OptimConfig(wd_semantics="big_vision", weight_decay=1e-4, epochs=2)
    assert cfg.make_schedule(10).wd_semantics == "big_vision"
    assert {g["decoupled_wd"] for g in cfg.make_optimizer(models.create_model("tiny_cnn", num_classes=10)).param_groups} == {0.0, 1e-4}


def test_big_vision_decay_on_xla_matches_cpu_without_recompiling(xla_device):
    """The decay factor changes every step (warm-up, cosine): on XLA it is device data, so each step after the first (Adam's state is new) reuses one graph."""
    import torch_xla
    import torch_xla.debug.metrics as met

    def run(device: torch.device) -> tuple[list[torch.Tensor], list[int]]:
        torch.manual_seed(0)
        model = models.create_model("tiny_cnn", num_classes=3, norm="group").to(device)
        optimizer = make_optimizer(model, "adamw", 1e-2, 0.5, wd_semantics="big_vision")
        s = Schedule(total_steps=6, lr=1e-2, warmup_steps=3, weight_decay=0.5, wd_semantics="big_vision")
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
        compiles = []
        for step in range(6):
            s.apply(optimizer, step)
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "xla":
                torch_xla.sync()
                compiles.append(met.metric_data("CompileTime")[0])
        return [p.detach().cpu() for p in model.parameters()], compiles

    xla_params, compiles = run(xla_device)
    cpu_params, _ = run(torch.device("cpu"))
    assert compiles[1:] == [compiles[1]] * 5, f"graphs compiled after each step: {compiles}"
    for p_xla, p_cpu in zip(xla_params, cpu_params, strict=True):
        torch.testing.assert_close(p_xla, p_cpu, rtol=1e-4, atol=1e-5)


# --- momentum, betas, eps: reach every optimizer that takes them, an error for the others --------------------------------------------------------------

CUDA_ONLY = ("bnb", "fused")  # bitsandbytes and APEX optimizers refuse to build without CUDA


@pytest.mark.parametrize("opt", [n for n in get_momentum_optimizers() if not n.startswith(CUDA_ONLY)])
def test_momentum_reaches_every_optimizer_with_momentum(opt):
    optimizer = make_optimizer(models.create_model("tiny_cnn", num_classes=10), opt, 1e-3, 0.05, momentum=0.3)
    assert {g["momentum"] for g in optimizer.param_groups} == {0.3}, "timm's default is 0.9"


def test_momentum_optimizers_are_timms():
    names = get_momentum_optimizers()
    assert {"sgd", "momentum", "nesterov", "rmsprop", "rmsproptf", "lars", "adafactorbv", "madgrad", "muon"} <= set(names)
    assert not {"adamw", "adam", "lamb", "lion"} & set(names)


def test_momentum_for_an_optimizer_without_it_is_one_line():
    with pytest.raises(ValueError, match=r"^--momentum 0.9 does not apply to --opt adamw, which takes no momentum .*; drop --momentum, .*e\.g\. sgd, ") as e:
        OptimConfig(opt="adamw", momentum=0.9)
    assert "\n" not in str(e.value)
    assert OptimConfig(opt="adamw").momentum is None, "no --momentum: the optimizer's default"
    optimizer = OptimConfig(opt="sgd").make_optimizer(models.create_model("tiny_cnn", num_classes=10))
    assert {g["momentum"] for g in optimizer.param_groups} == {0.9}


def test_momentum_on_the_command_line(capsys):
    import main

    with pytest.raises(SystemExit) as e:
        main.parse_args(["--momentum", "0.9"])  # default --opt adamw
    assert e.value.code == 2
    assert "error: --momentum 0.9 does not apply to --opt adamw" in capsys.readouterr().err
    assert main.parse_args(["--opt", "rmsproptf", "--momentum", "0.5"]).momentum == 0.5


def test_betas_and_eps_reach_the_optimizer_or_fail():
    model = models.create_model("tiny_cnn", num_classes=10)
    optimizer = OptimConfig(opt="adamw", opt_betas=[0.8, 0.99], opt_eps=1e-6).make_optimizer(model)
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.8, 0.99), 1e-6)}
    with pytest.raises(ValueError, match=r"^--opt_betas 0.9 0.99 does not apply to --opt sgd, which takes no betas; drop --opt_betas"):
        OptimConfig(opt="sgd", opt_betas=[0.9, 0.99])
    with pytest.raises(ValueError, match=r"^--opt_betas 0.9 gives 1 value; --opt adamw takes 2, e.g. --opt_betas 0.9 0.999$"):
        OptimConfig(opt="adamw", opt_betas=[0.9])
    with pytest.raises(ValueError, match=r"^--opt_eps 1e-08 does not apply to --opt sgd, which takes no eps; drop --opt_eps$"):
        OptimConfig(opt="sgd", opt_eps=1e-8)
    with pytest.raises(ValueError, match=r"^--opt_betas must be in \[0, 1\), got 1.5"):
        OptimConfig(opt="adamw", opt_betas=[0.9, 1.5])
    assert OptimConfig(opt="adan", opt_betas=[0.98, 0.92, 0.99]).opt_betas == [0.98, 0.92, 0.99]
