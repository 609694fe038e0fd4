"""MMD-family set losses (losses.py) against direct double-loop formulas, plus XLA tracing."""

import itertools
import math
import os

import numpy as np
import pytest
import scipy.optimize
import torch

import losses

os.environ.setdefault("PJRT_DEVICE", "CPU")  # read when the XLA test starts the device, not at import (tests/conftest.py sets it too)


def _d2(u, v) -> float:
    return sum((a - b) ** 2 for a, b in zip(u, v, strict=True))


def _dist(u, v) -> float:
    return math.sqrt(max(_d2(u, v), losses.DIST_EPS))


def _pair_mean(fn, xs, ys, exclude_diag: bool) -> float:
    vals = [fn(xs[i], ys[j]) for i in range(len(xs)) for j in range(len(ys)) if not (exclude_diag and i == j)]
    return sum(vals) / len(vals)


def ref_energy(xs, ys, unbiased: bool) -> float:
    return 2 * _pair_mean(_dist, xs, ys, False) - _pair_mean(_dist, xs, xs, unbiased) - _pair_mean(_dist, ys, ys, unbiased)


def ref_median_sq_dist(xs, ys) -> float:
    zs = xs + ys
    d2 = sorted(_d2(zs[i], zs[j]) for i, j in itertools.combinations(range(len(zs)), 2))
    return d2[(len(d2) - 1) // 2]  # lower median, as torch.median


def ref_rbf(xs, ys, sigmas, unbiased: bool) -> float:
    def k(u, v):
        return sum(math.exp(-_d2(u, v) / (2 * s**2)) for s in sigmas)

    return _pair_mean(k, xs, xs, unbiased) + _pair_mean(k, ys, ys, unbiased) - 2 * _pair_mean(k, xs, ys, False)


def ref_sinkhorn(xs, ys, blur: float, n_iters: int, scaling: float | None) -> float:
    """The same fixed-iteration, symmetric, log-domain debiased Sinkhorn, written with plain loops."""
    n, m = len(xs), len(ys)

    def cost(us, vs):
        return [[0.5 * _d2(u, v) for v in vs] for u in us]

    cxy, cyx, cxx, cyy = cost(xs, ys), cost(ys, xs), cost(xs, xs), cost(ys, ys)
    la, lb = [-math.log(n)] * n, [-math.log(m)] * m

    def softmin(eps, c, h):
        out = []
        for row in c:
            vals = [h[j] - row[j] / eps for j in range(len(h))]
            mx = max(vals)
            out.append(-eps * (mx + math.log(sum(math.exp(v - mx) for v in vals))))
        return out

    target = blur**2
    if scaling is None:
        eps_list = [target] * (n_iters + 1)
    else:
        diam2 = 2 * max(max(max(r) for r in c) for c in (cxy, cxx, cyy))
        eps_list = [max(diam2 * scaling ** (2 * t), target) for t in range(n_iters + 1)]
    e = eps_list[0]
    f_ba, g_ab, f_aa, g_bb = softmin(e, cxy, lb), softmin(e, cyx, la), softmin(e, cxx, la), softmin(e, cyy, lb)

    def add(h, f, e):
        return [hi + fi / e for hi, fi in zip(h, f, strict=True)]

    def avg(u, v):
        return [0.5 * (a + b) for a, b in zip(u, v, strict=True)]

    for e in eps_list[1:]:
        ft_ba, gt_ab = softmin(e, cxy, add(lb, g_ab, e)), softmin(e, cyx, add(la, f_ba, e))
        ft_aa, gt_bb = softmin(e, cxx, add(la, f_aa, e)), softmin(e, cyy, add(lb, g_bb, e))
        f_ba, g_ab, f_aa, g_bb = avg(f_ba, ft_ba), avg(g_ab, gt_ab), avg(f_aa, ft_aa), avg(g_bb, gt_bb)
    e = target
    f_ba_n, g_ab_n = softmin(e, cxy, add(lb, g_ab, e)), softmin(e, cyx, add(la, f_ba, e))
    f_aa_n, g_bb_n = softmin(e, cxx, add(la, f_aa, e)), softmin(e, cyy, add(lb, g_bb, e))
    return sum(a - b for a, b in zip(f_ba_n, f_aa_n, strict=True)) / n + sum(a - b for a, b in zip(g_ab_n, g_bb_n, strict=True)) / m


def _sets(b=2, n=5, m=5, g=3, seed=0, shift=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, g, generator=gen, dtype=torch.float64)
    y = torch.randn(b, m, g, generator=gen, dtype=torch.float64) + shift
    return x, y


def _rows(t: torch.Tensor, i: int) -> list[list[float]]:
    return t[i].tolist()


@pytest.mark.parametrize("unbiased", [False, True])
def test_energy_matches_double_loop(unbiased):
    x, y = _sets(n=5, m=4)
    got = losses.energy_distance(x, y, unbiased=unbiased)
    want = [ref_energy(_rows(x, i), _rows(y, i), unbiased) for i in range(x.shape[0])]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_energy_state_parity_is_half_the_v_statistic():
    x, y = _sets()
    full = losses.energy_distance(x, y)
    half = losses.make_set_loss("energy", state_parity=True)(x, y)
    np.testing.assert_allclose(half.numpy(), 0.5 * full.numpy(), rtol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_fixed_sigmas_matches_double_loop(unbiased):
    x, y = _sets(n=4, m=6)
    sigmas = [0.5, 1.0, 3.0]
    got = losses.rbf_mmd(x, y, sigmas=sigmas, unbiased=unbiased)
    want = [ref_rbf(_rows(x, i), _rows(y, i), sigmas, unbiased) for i in range(x.shape[0])]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_median_heuristic_matches_double_loop(unbiased):
    x, y = _sets(n=5, m=5, shift=0.5)
    got = losses.rbf_mmd(x, y, unbiased=unbiased)
    want = []
    for i in range(x.shape[0]):
        xs, ys = _rows(x, i), _rows(y, i)
        sigma = math.sqrt(ref_median_sq_dist(xs, ys))
        want.append(ref_rbf(xs, ys, [c * sigma for c in losses.MEDIAN_SCALES], unbiased))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    med = losses.median_sq_dist(x, y)
    np.testing.assert_allclose(med.numpy(), [ref_median_sq_dist(_rows(x, i), _rows(y, i)) for i in range(2)], rtol=1e-12)
    assert not med.requires_grad


@pytest.mark.parametrize("scaling", [None, 0.5])
def test_sinkhorn_matches_double_loop(scaling):
    x, y = _sets(n=4, m=5, g=2, shift=0.3)
    got = losses.sinkhorn_divergence(x, y, blur=0.5, n_iters=6, scaling=scaling)
    want = [ref_sinkhorn(_rows(x, i), _rows(y, i), 0.5, 6, scaling) for i in range(x.shape[0])]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_sinkhorn_small_blur_approaches_exact_ot():
    """With small blur and enough annealed iterations, S_eps is close to OT with cost |x-y|^2/2."""
    x, y = _sets(b=1, n=6, m=6, g=2, shift=1.0, seed=3)
    got = float(losses.sinkhorn_divergence(x, y, blur=0.02, n_iters=200, scaling=0.7)[0])
    c = 0.5 * torch.cdist(x[0], y[0]).pow(2).numpy()
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    ot = c[rows, cols].mean()
    assert got == pytest.approx(ot, rel=1e-2)


LOSS_CASES = [
    ("energy", {}),
    ("energy", {"estimator": "unbiased"}),
    ("rbf", {}),
    ("rbf", {"estimator": "unbiased"}),
    ("rbf", {"sigmas": [0.5, 2.0]}),
    ("sinkhorn", {"blur": 0.3, "sinkhorn_iters": 20}),
    ("mse", {}),
]


@pytest.mark.parametrize("name,kw", LOSS_CASES)
def test_identical_sets_zero_shifted_positive_finite_grads(name, kw):
    fn = losses.make_set_loss(name, **kw)
    x, _ = _sets(b=2, n=6, m=6, g=4)
    x = x.float()
    same = fn(x, x.clone())
    if kw.get("estimator") == "unbiased":
        # The U-statistic is unbiased over independent samples; for one set compared with itself it sits at or below 0.
        assert (same <= 1e-5).all()
    else:
        np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-5)
    shifted = fn(x, x + 2.0)
    assert (shifted > 1e-2).all() and (shifted > same + 1e-2).all()

    pred = x.clone().requires_grad_(True)
    fn(pred, x.clone()).sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_mean_mse_weight_adds_set_mean_mse():
    x, y = _sets()
    base = losses.make_set_loss("energy")(x, y)
    both = losses.make_set_loss("energy", mean_mse_weight=0.5)(x, y)
    mse = ((x.mean(1) - y.mean(1)) ** 2).mean(-1)
    np.testing.assert_allclose(both.numpy(), (base + 0.5 * mse).numpy(), rtol=1e-12)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ValueError, match=r"unknown set loss 'enrgy'; did you mean 'energy'"):
        losses.make_set_loss("enrgy")
    with pytest.raises(ValueError, match=r"unknown estimator 'unbaised'; did you mean 'unbiased'"):
        losses.make_set_loss("rbf", estimator="unbaised")
    with pytest.raises(ValueError, match="state_parity"):
        losses.make_set_loss("rbf", state_parity=True)


def test_set_loss_checks_shapes_at_the_boundary():
    fn = losses.make_set_loss("energy")
    with pytest.raises(Exception, match="pred_bsg|target_bsg|s"):
        fn(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4))


def test_energy_and_rbf_on_xla_match_cpu_without_recompiling():
    from utils import import_order

    import_order.check_xla_importable()
    import torch_xla
    import torch_xla.debug.metrics as met

    dev = torch_xla.device()
    fns = [losses.make_set_loss("energy"), losses.make_set_loss("rbf"), losses.make_set_loss("rbf", estimator="unbiased", sigmas=[1.0, 2.0])]

    def run_all(seed: int) -> list[torch.Tensor]:
        x, y = _sets(b=2, n=8, m=8, g=5, seed=seed, shift=0.5)
        x, y = x.float(), y.float()
        outs = [fn(x.to(dev), y.to(dev)) for fn in fns]
        torch_xla.sync()
        for fn, out in zip(fns, outs, strict=True):
            np.testing.assert_allclose(out.cpu().numpy(), fn(x, y).numpy(), rtol=1e-4, atol=1e-5)
        return outs

    met.clear_counters()
    run_all(seed=1)
    n_compiles = met.metric_data("CompileTime")[0]
    run_all(seed=2)
    assert met.metric_data("CompileTime")[0] == n_compiles
    # The median heuristic must stay on the device: a CPU fallback would sync every training step.
    fallbacks = [op for op in met.executed_fallback_ops() if op != "aten::_local_scalar_dense"]
    assert not fallbacks, f"set losses fell back to the CPU on XLA: {fallbacks}"
