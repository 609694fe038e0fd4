"""cell-eval metrics (cells/metrics.py) on tiny hand-made inputs with hand-computed answers."""

import math

import numpy as np
import pytest

from cells import metrics


def test_pseudobulk_mae_hand_computed():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    real = np.array([[1.0, 1.0], [3.0, 6.0]])
    assert metrics.pseudobulk_mae(pred, real) == pytest.approx(0.75)
    assert metrics.pseudobulk_mae(real, real) == 0.0


def _pds_example():
    # Perturbations "g0", "g1" target genes 0 and 1; "X" is not in the gene list. Controls at 0.
    real = np.eye(3)
    ctrl = np.zeros(3)
    target = metrics.get_target_gene_indices(["g0", "g1", "X"], ["g0", "g1", "g2"])
    return real, ctrl, target


def test_target_gene_indices():
    _, _, target = _pds_example()
    np.testing.assert_array_equal(target, [0, 1, -1])


def test_pds_perfect_is_one_and_shuffled_is_hand_computed():
    real, ctrl, target = _pds_example()
    np.testing.assert_allclose(metrics.pds_per_pert(real, real, ctrl, ctrl, target), [1.0, 1.0, 1.0])
    # pred_p = real_{p+1}. p0 ([0,1,0], gene 0 dropped): distances to q = 1, 0, 2 -> rank 1 -> 2/3.
    # p1 ([0,0,1], gene 1 dropped): 2, 1, 0 -> rank 1 -> 2/3. p2 ([1,0,0], no gene dropped): 0, 2, 2 -> rank 2 -> 1/3.
    shuffled = real[[1, 2, 0]]
    np.testing.assert_allclose(metrics.pds_per_pert(real, shuffled, ctrl, ctrl, target), [2 / 3, 2 / 3, 1 / 3])
    assert metrics.discrimination_score(real, shuffled, ctrl, ctrl, target) == pytest.approx(5 / 9)


def test_pds_excludes_the_target_gene_and_uses_signed_deltas_from_each_control():
    real = np.array([[10.0, 1.0], [0.0, 0.0]])
    pred = np.array([[0.0, 1.0], [0.0, 0.0]])  # p0 misses its own target gene, gets the rest right
    ctrl = np.zeros(2)
    # Target gene "a" excluded for p0: distances 0 (q0) and 1 (q1) -> rank 0.
    excl = metrics.pds_per_pert(real, pred, ctrl, ctrl, metrics.get_target_gene_indices(["a", "b"], ["a", "z"]))
    assert excl[0] == 1.0
    # Without exclusion: distances 10 and 1 -> rank 1 -> 1 - 1/2.
    incl = metrics.pds_per_pert(real, pred, ctrl, ctrl, np.array([-1, -1]))
    assert incl[0] == 0.5
    # Deltas are taken against each side's own control mean: shifting pred and its control together changes nothing.
    shifted = metrics.pds_per_pert(real, pred + 3.0, ctrl, ctrl + 3.0, np.array([-1, -1]))
    np.testing.assert_allclose(shifted, incl)
    # Signed: a delta of the opposite sign is not a match.
    real2 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5]])
    flipped = metrics.pds_per_pert(real2, -real2, np.zeros(2), np.zeros(2), np.array([-1, -1, -1]))
    assert flipped[0] < 1.0 and flipped[1] < 1.0


def test_benjamini_hochberg_matches_manual():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> p*n/rank = 0.04, 0.06, 0.0533, 0.2 -> running min from the top.
    np.testing.assert_allclose(metrics.benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_mann_whitney_tie_and_continuity_corrected():
    x = np.array([[1.0], [2.0], [3.0]])
    y = np.array([[3.0], [4.0], [5.0], [6.0]])
    # ranks of x: 1, 2, 3.5 -> U = 6.5 - 6 = 0.5; mu = 6; sigma^2 = 3*4/12 * (8 - (2^3-2)/(7*6)).
    sigma = math.sqrt(8 - 6 / 42)
    z = (abs(0.5 - 6) - 0.5) / sigma
    p = math.erfc(z / math.sqrt(2))
    np.testing.assert_allclose(metrics.mann_whitney_pvalues(x, y), [p], rtol=1e-12)
    # An all-tied gene carries no evidence.
    assert metrics.mann_whitney_pvalues(np.zeros((3, 1)), np.zeros((4, 1)))[0] == 1.0


def test_log2_fold_change_on_geometric_means():
    treated = np.log1p(np.array([[3.0, 0.0, 2.0], [3.0, 0.0, 2.0]]))
    ref = np.log1p(np.array([[1.0, 0.0, 0.0]]))
    lfc = metrics.log2_fold_change(treated, ref)
    assert lfc[0] == pytest.approx(math.log2(3.0))
    assert lfc[1] == 0.0  # 0/0: unexpressed in both
    assert lfc[2] == math.inf


def _de_cells(effects: dict[int, float], n_genes: int = 4, n_cells: int = 20, seed: int = 0) -> np.ndarray:
    """Cells whose genes repeat the control values, with gene j shifted up by effects[j] (clear separation)."""
    base = np.linspace(0.1, 1.0, n_cells)
    cells = np.stack([np.random.default_rng(seed + j).permutation(base) for j in range(n_genes)], axis=1)
    for j, e in effects.items():
        cells[:, j] += e
    return cells


def test_de_overlap_hand_made():
    ctrl = _de_cells({})
    real = _de_cells({0: 2.0, 1: 1.0})
    np.testing.assert_array_equal(metrics.de_genes(real, ctrl), [0, 1])  # ranked by |log2FC|
    assert metrics.de_overlap(real, real, ctrl) == 1.0
    # Only gene 0 predicted: k = 2, overlap 1.
    assert metrics.de_overlap(real, _de_cells({0: 2.0}), ctrl) == 0.5
    # Three predicted genes; the top k = 2 by |log2FC| are genes 3 and 0, so gene 1 falls off.
    assert metrics.de_overlap(real, _de_cells({3: 3.0, 0: 2.0, 1: 0.5}), ctrl) == 0.5
    # No real DE genes: 0 by definition.
    assert metrics.de_overlap(ctrl, real, ctrl) == 0.0


def test_baseline_normalized_score():
    assert metrics.baseline_normalized_score(0.02, 0.04, higher_is_better=False) == pytest.approx(0.5)
    assert metrics.baseline_normalized_score(0.05, 0.04, higher_is_better=False) == 0.0  # worse than baseline: clipped
    assert metrics.baseline_normalized_score(0.8, 0.5, higher_is_better=True) == pytest.approx(0.6)
    assert metrics.baseline_normalized_score(float("nan"), 0.5, higher_is_better=True) == 0.0
    assert metrics.baseline_normalized_score(0.0, 0.0, higher_is_better=False) == 0.0  # 0/0 -> NaN -> 0


def test_baselines():
    ctrl = np.array([1.0, 2.0])
    np.testing.assert_array_equal(metrics.mean_of_controls_baseline(ctrl, 3), [[1.0, 2.0]] * 3)
    train = np.array([[1.0, 0.0], [3.0, 2.0]])
    np.testing.assert_array_equal(metrics.mean_of_perturbations_baseline(train, 2), [[2.0, 1.0]] * 2)
