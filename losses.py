"""Training losses, one family per section (each under a banner comment).

Shape letters: b batch, s cells in a set, g genes; n and m are the sizes of the two sets compared by a
set loss (n = m = s for the batch contract), k kernel bandwidths; c classes (distillation).
"""

# ruff: noqa: F722  (jaxtyping shape strings such as "b s g" are not forward annotations)

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence

import beartype
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from utils import settings

# =====================================================================================================
# MMD family on cell sets: [b, s, g] x [b, s, g] -> per-set loss [b]
# =====================================================================================================
#
# Every loss here compares the predicted set of cells with the observed set, row by row, and returns
# one value per set; the caller averages over the valid rows (see tasks/cellset.py). All of them are
# fixed-shape: no data-dependent Python branches and no host reads, so they trace to one XLA graph.
#
# Pairwise squared distances use ||x||^2 + ||y||^2 - 2 x.y (one batched matmul, no [b, n, m, g]
# tensor), clamped at 0. Both sets are first shifted by their pooled mean (detached; every loss here
# is translation invariant) to limit cancellation in that formula. On TPU, float32 matmuls run at
# `default` precision (one bf16 pass) unless `torch_xla.backends.set_mat_mul_precision('high')` is
# set, which makes small distances noticeably less accurate; the runtime owns that setting.

SET_LOSSES = ("energy", "rbf", "sinkhorn", "mse")
ESTIMATORS = ("biased", "unbiased")
MEDIAN_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
# sqrt(clamp_min(d2, DIST_EPS)): finite gradient at zero distance (the same clamp as geomloss).
DIST_EPS = 1e-8

SetLoss = Callable[[Tensor, Tensor], Tensor]


def _center(x_bng: Tensor, y_bmg: Tensor) -> tuple[Tensor, Tensor]:
    """Shift both sets by their pooled mean; detached, because the losses do not depend on it."""
    mu_b1g = torch.cat([x_bng, y_bmg], dim=1).mean(dim=1, keepdim=True).detach()
    return x_bng - mu_b1g, y_bmg - mu_b1g


def pairwise_sq_dists(x_bng: Tensor, y_bmg: Tensor) -> Tensor:
    """||x_i - y_j||^2 for every pair, [b, n, m], via one batched matmul, clamped at 0."""
    xx_bn1 = (x_bng * x_bng).sum(dim=-1, keepdim=True)
    yy_b1m = (y_bmg * y_bmg).sum(dim=-1).unsqueeze(1)
    d2_bnm = xx_bn1 + yy_b1m - 2.0 * torch.bmm(x_bng, y_bmg.transpose(1, 2))
    return d2_bnm.clamp_min(0.0)


def _safe_dist(d2: Tensor) -> Tensor:
    return torch.sqrt(d2.clamp_min(DIST_EPS))


def _within_mean(k_bnn: Tensor, unbiased: bool) -> Tensor:
    """Mean of a within-set kernel matrix: all n^2 entries (V) or the n(n-1) off-diagonal ones (U)."""
    n = k_bnn.shape[-1]
    if not unbiased:
        return k_bnn.mean(dim=(1, 2))
    if n < 2:
        raise ValueError(f"the unbiased estimator needs at least 2 cells per set, got {n}")
    off_b = k_bnn.sum(dim=(1, 2)) - k_bnn.diagonal(dim1=1, dim2=2).sum(dim=-1)
    return off_b / (n * (n - 1))


@jaxtyped(typechecker=beartype.beartype)
def energy_distance(x_bng: Float[Tensor, "b n g"], y_bmg: Float[Tensor, "b m g"], *, unbiased: bool = False, state_parity: bool = False) -> Float[Tensor, " b"]:
    """Energy distance 2E||X-Y|| - E||X-X'|| - E||Y-Y'|| per set (Szekely-Rizzo).

    V-statistic (biased, within-set sums over all n^2 pairs, diagonal included) or U-statistic
    (within-set sums over i != j, divided by n(n-1); can be negative). The V form equals what cell-eval
    `edistance` and pertpy `Edistance` compute. geomloss / STATE "energy" returns half of the V form:
    `state_parity=True` multiplies by 1/2 (only meaningful with the biased estimator).
    """
    x_bng, y_bmg = _center(x_bng, y_bmg)
    cross_b = _safe_dist(pairwise_sq_dists(x_bng, y_bmg)).mean(dim=(1, 2))
    within_x_b = _within_mean(_safe_dist(pairwise_sq_dists(x_bng, x_bng)), unbiased)
    within_y_b = _within_mean(_safe_dist(pairwise_sq_dists(y_bmg, y_bmg)), unbiased)
    e_b = 2.0 * cross_b - within_x_b - within_y_b
    return 0.5 * e_b if state_parity else e_b


@jaxtyped(typechecker=beartype.beartype)
def median_sq_dist(x_bng: Float[Tensor, "b n g"], y_bmg: Float[Tensor, "b m g"]) -> Float[Tensor, " b"]:
    """Median of ||z_i - z_j||^2 over the pairs i < j of the pooled set z = x u y, detached.

    Computed with one sort of the full distance matrix (XLA lowers sort; `median` and `triu_indices`
    would fall back to the CPU and sync every step): the sorted row holds the n diagonal zeros first,
    then every pair twice, so the lower median of the P = n(n-1)/2 pairs sits at the static index
    n + 2 * ((P - 1) // 2), the value torch.median would return.
    """
    with torch.no_grad():
        z_bng = torch.cat([x_bng, y_bmg], dim=1).detach()
        z_bng = z_bng - z_bng.mean(dim=1, keepdim=True)
        n = z_bng.shape[1]
        off_diag_nn = 1.0 - torch.eye(n, dtype=z_bng.dtype, device=z_bng.device)
        d2_bnn = pairwise_sq_dists(z_bng, z_bng) * off_diag_nn  # exact zeros on the diagonal (the matmul form leaves round-off there)
        n_pairs = n * (n - 1) // 2
        return d2_bnn.flatten(1).sort(dim=-1).values[:, n + 2 * ((n_pairs - 1) // 2)]


def _rbf_kernel(d2_bnm: Tensor, sigma2_bk: Tensor) -> Tensor:
    """Sum over the k bandwidths of exp(-d2 / (2 sigma^2)); k is static, so a Python loop is fine."""
    k_bnm = torch.zeros_like(d2_bnm)
    for i in range(sigma2_bk.shape[1]):
        k_bnm = k_bnm + torch.exp(-d2_bnm / (2.0 * sigma2_bk[:, i, None, None]))
    return k_bnm


@jaxtyped(typechecker=beartype.beartype)
def rbf_mmd(
    x_bng: Float[Tensor, "b n g"],
    y_bmg: Float[Tensor, "b m g"],
    *,
    sigmas: Sequence[float] | None = None,
    median_scales: Sequence[float] = MEDIAN_SCALES,
    unbiased: bool = False,
) -> Float[Tensor, " b"]:
    """MMD^2 with the multi-bandwidth Gaussian kernel k = sum_s exp(-||x-y||^2 / (2 sigma_s^2)).

    `sigmas` is a fixed list of bandwidths; None uses the median heuristic per set,
    sigma_s = scale_s * sqrt(median pooled squared distance) for scale_s in `median_scales`,
    computed detached from the graph. Biased (V, >= 0) or unbiased (U, within-set sums over i != j).
    """
    x_bng, y_bmg = _center(x_bng, y_bmg)
    b = x_bng.shape[0]
    if sigmas is None:
        scales2_k = torch.tensor([float(c) ** 2 for c in median_scales], dtype=x_bng.dtype, device=x_bng.device)
        sigma2_bk = median_sq_dist(x_bng, y_bmg).clamp_min(DIST_EPS)[:, None] * scales2_k[None, :]
    else:
        sigma2_k = torch.tensor([float(c) ** 2 for c in sigmas], dtype=x_bng.dtype, device=x_bng.device)
        sigma2_bk = sigma2_k[None, :].expand(b, -1)
    kxx_b = _within_mean(_rbf_kernel(pairwise_sq_dists(x_bng, x_bng), sigma2_bk), unbiased)
    kyy_b = _within_mean(_rbf_kernel(pairwise_sq_dists(y_bmg, y_bmg), sigma2_bk), unbiased)
    kxy_b = _rbf_kernel(pairwise_sq_dists(x_bng, y_bmg), sigma2_bk).mean(dim=(1, 2))
    return kxx_b + kyy_b - 2.0 * kxy_b


def check_sinkhorn(blur: float, n_iters: int, scaling: float | None) -> None:
    """The Sinkhorn settings the divergence needs: blur > 0, n_iters >= 0, scaling in (0, 1) or None."""
    if blur <= 0 or n_iters < 0:
        raise ValueError(f"sinkhorn needs blur > 0 and n_iters >= 0, got blur={blur} n_iters={n_iters}")
    if scaling is not None and not 0 < scaling < 1:
        raise ValueError(f"sinkhorn scaling must be in (0, 1) or None, got {scaling}")


def _softmin(eps_b: Tensor, c_bnm: Tensor, h_bm: Tensor) -> Tensor:
    """-eps log sum_j exp(h_j - C_ij / eps), [b, n]: the log-domain Sinkhorn update."""
    return -eps_b[:, None] * torch.logsumexp(h_bm[:, None, :] - c_bnm / eps_b[:, None, None], dim=-1)


@jaxtyped(typechecker=beartype.beartype)
def sinkhorn_divergence(
    x_bng: Float[Tensor, "b n g"],
    y_bmg: Float[Tensor, "b m g"],
    *,
    blur: float = 0.05,
    n_iters: int = 50,
    scaling: float | None = 0.5,
) -> Float[Tensor, " b"]:
    """Debiased Sinkhorn divergence S = OT_eps(a, b) - OT_eps(a, a)/2 - OT_eps(b, b)/2 (Feydy et al. 2019).

    Uniform weights, cost C = ||x - y||^2 / 2, eps = blur^2, balanced. The dual potentials are
    updated in the log domain with symmetric (averaged) steps for a FIXED number of iterations, so the
    graph has one shape. With `scaling` (epsilon annealing), iteration t runs at
    eps_t = max(diam^2 scaling^(2t), blur^2), where diam is the largest pairwise distance of the set
    (a tensor, detached): the schedule is data-dependent only through values, never through shapes.
    `scaling=None` keeps eps = blur^2 throughout. The iterations run without autograd; one final
    update at eps = blur^2 is differentiated, which gives the envelope-theorem gradient at convergence.
    Too few iterations for the ratio diam^2 / blur^2 gives an unconverged (but still symmetric,
    zero-on-identical-sets) value.
    """
    check_sinkhorn(blur, n_iters, scaling)
    x_bng, y_bmg = _center(x_bng, y_bmg)
    b, n, m = x_bng.shape[0], x_bng.shape[1], y_bmg.shape[1]
    # Each potential is differentiated through its own points only (the cost's second argument detached, as geomloss does): the
    # final update gives f(x_i) and g(y_j) each their own dependence on the points, and letting both potentials see x would count
    # the envelope-theorem gradient sum_j pi_ij dC(x_i, y_j) / dx_i twice.
    c_xy = 0.5 * pairwise_sq_dists(x_bng, y_bmg.detach())
    c_yx = 0.5 * pairwise_sq_dists(y_bmg, x_bng.detach())
    c_xx = 0.5 * pairwise_sq_dists(x_bng, x_bng.detach())
    c_yy = 0.5 * pairwise_sq_dists(y_bmg, y_bmg.detach())
    log_a_bn = torch.full((b, n), -math.log(n), dtype=x_bng.dtype, device=x_bng.device)
    log_b_bm = torch.full((b, m), -math.log(m), dtype=x_bng.dtype, device=x_bng.device)
    eps_target_b = torch.full((b,), blur**2, dtype=x_bng.dtype, device=x_bng.device)

    with torch.no_grad():
        cxy, cyx, cxx, cyy = c_xy.detach(), c_yx.detach(), c_xx.detach(), c_yy.detach()
        if scaling is None:
            eps_list = [eps_target_b] * (n_iters + 1)
        else:
            # max cost = diam^2 / 2 over all pairs of the pooled set.
            diam2_b = 2.0 * torch.stack([cxy.amax(dim=(1, 2)), cxx.amax(dim=(1, 2)), cyy.amax(dim=(1, 2))]).amax(dim=0)
            eps_list = [torch.maximum(diam2_b * scaling ** (2 * t), eps_target_b) for t in range(n_iters + 1)]
        eps = eps_list[0]
        f_ba, g_ab = _softmin(eps, cxy, log_b_bm), _softmin(eps, cyx, log_a_bn)
        f_aa, g_bb = _softmin(eps, cxx, log_a_bn), _softmin(eps, cyy, log_b_bm)
        for eps in eps_list[1:]:
            ft_ba = _softmin(eps, cxy, log_b_bm + g_ab / eps[:, None])
            gt_ab = _softmin(eps, cyx, log_a_bn + f_ba / eps[:, None])
            ft_aa = _softmin(eps, cxx, log_a_bn + f_aa / eps[:, None])
            gt_bb = _softmin(eps, cyy, log_b_bm + g_bb / eps[:, None])
            f_ba, g_ab = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
            f_aa, g_bb = 0.5 * (f_aa + ft_aa), 0.5 * (g_bb + gt_bb)

    # Final extrapolation at the target eps, with gradients through the costs only.
    eps = eps_target_b
    f_ba_new = _softmin(eps, c_xy, log_b_bm + g_ab / eps[:, None])
    g_ab_new = _softmin(eps, c_yx, log_a_bn + f_ba / eps[:, None])
    f_aa_new = _softmin(eps, c_xx, log_a_bn + f_aa / eps[:, None])
    g_bb_new = _softmin(eps, c_yy, log_b_bm + g_bb / eps[:, None])
    return (f_ba_new - f_aa_new).mean(dim=1) + (g_ab_new - g_bb_new).mean(dim=1)


@jaxtyped(typechecker=beartype.beartype)
def mean_mse(x_bng: Float[Tensor, "b n g"], y_bmg: Float[Tensor, "b m g"]) -> Float[Tensor, " b"]:
    """Mean over genes of the squared difference between the two set means (pseudobulks)."""
    return (x_bng.mean(dim=1) - y_bmg.mean(dim=1)).pow(2).mean(dim=-1)


def _unknown(kind: str, value: str, known: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown {kind} {value!r}{hint} (expected one of {', '.join(known)})")


def make_set_loss(
    name: str,
    *,
    estimator: str = "biased",
    sigmas: Sequence[float] | None = None,
    median_scales: Sequence[float] = MEDIAN_SCALES,
    blur: float = 0.05,
    sinkhorn_iters: int = 50,
    sinkhorn_scaling: float | None = 0.5,
    state_parity: bool = False,
    mean_mse_weight: float = 0.0,
) -> SetLoss:
    """Build `loss_fn(pred_bsg, target_bsg) -> loss_b` by name: energy | rbf | sinkhorn | mse.

    `estimator` (biased V / unbiased U) applies to energy and rbf; `sigmas` (None = median heuristic
    times `median_scales`) to rbf; `blur`, `sinkhorn_iters`, `sinkhorn_scaling` to sinkhorn;
    `state_parity` (x 1/2, geomloss/STATE convention) to biased energy. `mse` is the MSE between set
    means only. `mean_mse_weight` > 0 adds that weight times the set-mean MSE to any of them.
    """
    if name not in SET_LOSSES:
        raise _unknown("set loss", name, SET_LOSSES)
    if estimator not in ESTIMATORS:
        raise _unknown("estimator", estimator, ESTIMATORS)
    unbiased = estimator == "unbiased"
    if state_parity and (name != "energy" or unbiased):
        raise ValueError(f"state_parity (geomloss 1/2 factor) applies to the biased energy loss only, got name={name!r} estimator={estimator!r}")
    if sigmas is not None and (len(sigmas) == 0 or min(sigmas) <= 0):
        raise ValueError(f"sigmas must be a non-empty list of positive bandwidths, got {sigmas}")
    if len(median_scales) == 0 or min(median_scales) <= 0:
        raise ValueError(f"median_scales must be non-empty and positive, got {median_scales}")
    if name == "sinkhorn":
        check_sinkhorn(blur, sinkhorn_iters, sinkhorn_scaling)
    if mean_mse_weight < 0:
        raise ValueError(f"mean_mse_weight must be >= 0, got {mean_mse_weight}")

    sigmas = None if sigmas is None else tuple(float(s) for s in sigmas)
    median_scales = tuple(float(s) for s in median_scales)

    def base(pred_bsg: Tensor, target_bsg: Tensor) -> Tensor:
        if name == "energy":
            return energy_distance(pred_bsg, target_bsg, unbiased=unbiased, state_parity=state_parity)
        if name == "rbf":
            return rbf_mmd(pred_bsg, target_bsg, sigmas=sigmas, median_scales=median_scales, unbiased=unbiased)
        if name == "sinkhorn":
            return sinkhorn_divergence(pred_bsg, target_bsg, blur=blur, n_iters=sinkhorn_iters, scaling=sinkhorn_scaling)
        return mean_mse(pred_bsg, target_bsg)

    @jaxtyped(typechecker=beartype.beartype)
    def set_loss(pred_bsg: Float[Tensor, "b s g"], target_bsg: Float[Tensor, "b s g"]) -> Float[Tensor, " b"]:
        loss_b = base(pred_bsg, target_bsg)
        if mean_mse_weight > 0:
            loss_b = loss_b + mean_mse_weight * mean_mse(pred_bsg, target_bsg)
        return loss_b

    set_loss.__qualname__ = set_loss.__name__ = f"set_loss_{name}"
    return set_loss


@dataclasses.dataclass(frozen=True)
class SetLossConfig:
    """The `MMD / set loss` flags; `build()` is the loss they name, and building it is their check."""

    set_loss: str = "energy"  # names and the estimator are checked by make_set_loss, with close matches
    mmd_estimator: str = "biased"
    mmd_sigmas: list[float] | None = None
    sinkhorn_blur: float = 0.05
    sinkhorn_iters: int = 50
    set_loss_state_parity: bool = False
    mean_mse_weight: float = settings.setting(0.0, range=settings.NON_NEGATIVE)

    def __post_init__(self):
        settings.check_fields(self)
        try:
            self.build()
        except ValueError as e:
            raise ValueError(f"--set_loss and the MMD flags: {e}") from None

    def build(self) -> SetLoss:
        return make_set_loss(
            self.set_loss,
            estimator=self.mmd_estimator,
            sigmas=self.mmd_sigmas,
            blur=self.sinkhorn_blur,
            sinkhorn_iters=self.sinkhorn_iters,
            state_parity=self.set_loss_state_parity,
            mean_mse_weight=self.mean_mse_weight,
        )

    def describe(self) -> str:
        return f"{self.set_loss} ({self.mmd_estimator})" + (f" + {self.mean_mse_weight:g} x set-mean MSE" if self.mean_mse_weight > 0 else "")


# =====================================================================================================
# Distillation: student logits [b, c] (or DeiT's (cls, dist) pair) and teacher logits [b, c] -> scalar
# =====================================================================================================
#
# total = (1 - alpha) * base(cls_logits, targets) + alpha * kd(dist_logits, teacher_logits), where a
# single-head student uses its one head for both terms and a DeiT student with a distillation token
# gives its class head to the base loss and its distillation head to the KD loss. `targets` are
# int64 labels [b] or soft targets [b, c] (mixup); the teacher sees the same (mixed) image.
# The KL is written out with log_softmax: F.kl_div on XLA warns that it has no autograd kernel.

DISTILLATION_TYPES = ("none", "soft", "hard")
KD_SCALINGS = ("batchmean_t2", "deit")

StudentOutput = Tensor | tuple[Tensor, Tensor]


def check_kd_scaling(scaling: str) -> None:
    if scaling not in KD_SCALINGS:
        raise _unknown("KD scaling", scaling, KD_SCALINGS)


@jaxtyped(typechecker=beartype.beartype)
def soft_distillation_loss(
    student_logits_bc: Float[Tensor, "b c"], teacher_logits_bc: Float[Tensor, "b c"], temperature: float, scaling: str = "batchmean_t2"
) -> Float[Tensor, ""]:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), the teacher's distribution as the target.

    `batchmean_t2` (Hinton; timm's LogitDistillationTask and mdistiller): the KL summed over classes,
    averaged over the batch, times T^2 so that gradient magnitudes stay comparable across T.
    `deit`: DeiT's `kl_div(..., reduction='sum') * T^2 / numel`, i.e. the same value divided by the
    number of classes c (1/1000 on ImageNet); keep it only to reproduce DeiT numbers, since at a given
    alpha it makes the KD term c times weaker.
    """
    check_kd_scaling(scaling)
    t = float(temperature)
    logp_s_bc = F.log_softmax(student_logits_bc.float() / t, dim=-1)
    logp_t_bc = F.log_softmax(teacher_logits_bc.detach().float() / t, dim=-1)
    kl_b = (logp_t_bc.exp() * (logp_t_bc - logp_s_bc)).sum(dim=-1)
    if scaling == "batchmean_t2":
        return kl_b.mean() * (t * t)
    return kl_b.sum() * (t * t) / student_logits_bc.numel()


@jaxtyped(typechecker=beartype.beartype)
def hard_distillation_loss(student_logits_bc: Float[Tensor, "b c"], teacher_logits_bc: Float[Tensor, "b c"]) -> Float[Tensor, ""]:
    """Cross-entropy against the teacher's argmax (DeiT's hard distillation; no label smoothing)."""
    return F.cross_entropy(student_logits_bc.float(), teacher_logits_bc.detach().argmax(dim=-1))


@jaxtyped(typechecker=beartype.beartype)
def classification_loss(logits_bc: Float[Tensor, "b c"], targets: Int[Tensor, " b"] | Float[Tensor, "b c"], label_smoothing: float = 0.0) -> Float[Tensor, ""]:
    """Cross-entropy on int labels or on soft targets (probabilities, e.g. after mixup)."""
    return F.cross_entropy(logits_bc.float(), targets, label_smoothing=label_smoothing)


class DistillationLoss:
    """`(1 - alpha) * base + alpha * kd` with kd in none | soft | hard; returns (loss, parts to log).

    The teacher is not part of the loss: the caller runs it (frozen, under no_grad) and passes its
    logits, so the loss is a pure function of tensors and can be checked on hand-made logits.
    `distillation_type='none'` is the base loss alone (alpha is ignored).
    """

    def __init__(self, distillation_type: str, alpha: float, temperature: float = 1.0, scaling: str = "batchmean_t2", label_smoothing: float = 0.0):
        if distillation_type not in DISTILLATION_TYPES:
            raise _unknown("distillation type", distillation_type, DISTILLATION_TYPES)
        check_kd_scaling(scaling)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.distillation_type, self.alpha, self.temperature, self.scaling = distillation_type, float(alpha), float(temperature), scaling
        self.label_smoothing = label_smoothing

    def __call__(self, outputs: StudentOutput, teacher_logits_bc: Tensor | None, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cls_logits_bc, dist_logits_bc = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = classification_loss(cls_logits_bc, targets, self.label_smoothing)
        if self.distillation_type == "none":
            return base, {"loss_base": base.detach()}
        assert teacher_logits_bc is not None, f"distillation type {self.distillation_type!r} needs the teacher's logits"
        if self.distillation_type == "soft":
            kd = soft_distillation_loss(dist_logits_bc, teacher_logits_bc, self.temperature, self.scaling)
        else:
            kd = hard_distillation_loss(dist_logits_bc, teacher_logits_bc)
        loss = (1.0 - self.alpha) * base + self.alpha * kd
        return loss, {"loss_base": base.detach(), "loss_kd": kd.detach()}
