"""Set-loss gradients: autograd against central finite differences of the loss's own value, and the Sinkhorn divergence against geomloss.

The finite differences take the derivative along random directions in float64 (the directional derivative <grad, v> must equal
(L(x + h v) - L(x - h v)) / 2h), for every set loss and both estimators, through the predicted set (what the model moves). The RBF
median heuristic picks its bandwidth from the data without differentiating through that choice (a detached constant, like geomloss's
and STATE's), so its finite difference is taken with the bandwidth held at the value of the unperturbed sets.
"""

import pytest
import torch

import losses

N, M, G = 12, 12, 5  # make_set_loss compares sets of one size (the batch contract)
H = 1e-5  # central difference step in float64: O(h^2) error ~1e-10, rounding ~1e-11 / h


def _sets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, N, G, generator=gen, dtype=torch.float64)
    y = torch.randn(2, M, G, generator=gen, dtype=torch.float64) * 0.8 + 0.5
    return x, y


def _directional(fn, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, float]:
    """(<autograd gradient of sum fn(x, y) wrt x, v>, the central difference along v) for a random unit direction v."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed), dtype=x.dtype)
    v = v / v.norm()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x_req, y).sum(), x_req)
    with torch.no_grad():
        fd = (fn(x + H * v, y).sum() - fn(x - H * v, y).sum()) / (2 * H)
    return float((grad * v).sum()), float(fd)


LOSSES = {
    "energy_biased": dict(name="energy"),
    "energy_unbiased": dict(name="energy", estimator="unbiased"),
    "energy_state_parity": dict(name="energy", state_parity=True),
    "rbf_fixed_biased": dict(name="rbf", sigmas=[0.5, 1.0, 2.0]),
    "rbf_fixed_unbiased": dict(name="rbf", sigmas=[0.5, 1.0, 2.0], estimator="unbiased"),
    # The envelope-theorem gradient is exact at convergence: enough iterations for these sets (1e-8 relative; 300 leave 1e-3).
    "sinkhorn": dict(name="sinkhorn", blur=0.5, sinkhorn_iters=3000, sinkhorn_scaling=None),
    "sinkhorn_annealed": dict(name="sinkhorn", blur=0.5, sinkhorn_iters=3000, sinkhorn_scaling=0.9),
    "mse": dict(name="mse"),
    "energy_plus_mean_mse": dict(name="energy", mean_mse_weight=0.5),
}


@pytest.mark.parametrize("key", list(LOSSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_set_loss_gradient_matches_finite_differences(key, seed):
    kw = dict(LOSSES[key])
    loss_fn = losses.make_set_loss(kw.pop("name"), **kw)
    x, y = _sets(seed)
    analytic, numeric = _directional(loss_fn, x, y, seed)
    assert abs(numeric) > 1e-6, "a direction the loss does not move along tests nothing"
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8), (key, analytic, numeric)


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_median_heuristic_gradient_at_a_fixed_bandwidth(unbiased):
    """The median bandwidth is a detached constant: the gradient is that of the RBF MMD at the bandwidth of the unperturbed sets."""
    x, y = _sets(3)
    sigmas = (losses.median_sq_dist(x, y).sqrt()[:, None] * torch.tensor(losses.MEDIAN_SCALES, dtype=x.dtype)).tolist()
    estimator = "unbiased" if unbiased else "biased"
    auto = losses.make_set_loss("rbf", estimator=estimator)
    for b in range(x.shape[0]):
        fixed = losses.make_set_loss("rbf", sigmas=sigmas[b], estimator=estimator)
        xb, yb = x[b : b + 1], y[b : b + 1]
        analytic, _ = _directional(auto, xb, yb, seed=b)
        _, numeric = _directional(fixed, xb, yb, seed=b)
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8)


geomloss = pytest.importorskip("geomloss")


@pytest.mark.parametrize("blur", [0.5, 1.0])
def test_sinkhorn_value_and_gradient_match_geomloss(blur):
    """Converged debiased Sinkhorn divergence, p=2 (cost |x - y|^2 / 2): value and gradient equal geomloss's tensorized solver.

    geomloss runs one update per step of its epsilon annealing, so it converges as `scaling` goes to 1 (0.95 leaves 0.4% of the value
    at blur 0.5, 0.999 leaves 2e-6); ours runs a fixed number of damped updates at the target blur.
    """
    x, y = _sets(5)
    ref_fn = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.9995, debias=True, backend="tensorized")
    ours_fn = losses.make_set_loss("sinkhorn", blur=blur, sinkhorn_iters=3000, sinkhorn_scaling=None)
    x_ours, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours, ref = ours_fn(x_ours, y), ref_fn(x_ref, y)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-8)
    (g_ours,) = torch.autograd.grad(ours.sum(), x_ours)
    (g_ref,) = torch.autograd.grad(ref.sum(), x_ref)
    ratio = float((g_ours * g_ref).sum() / (g_ref * g_ref).sum())
    assert ratio == pytest.approx(1.0, abs=1e-3), f"gradient is {ratio:.4f}x geomloss's"
    rel_err = float((g_ours - g_ref).norm() / g_ref.norm())
    assert rel_err < 2e-3, f"gradients differ by {rel_err:.2e} of their norm"  # before the fix: ours was 2.000x geomloss's


def test_energy_is_twice_geomloss_energy_and_state_parity_equals_it():
    """geomloss's "energy" kernel loss is half the biased V-statistic energy distance; `state_parity` is that convention (STATE's)."""
    x, y = _sets(6)
    ref = geomloss.SamplesLoss("energy", backend="tensorized")(x, y)
    torch.testing.assert_close(losses.make_set_loss("energy")(x, y), 2 * ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses.make_set_loss("energy", state_parity=True)(x, y), ref, rtol=1e-6, atol=1e-9)
