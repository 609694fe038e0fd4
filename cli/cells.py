"""Flags: Cell-set data from .h5ad files (--data_set h5ad) and the per-set losses."""

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "h5ad / cell sets",
        "Perturbation screens in .h5ad files (--data_set h5ad): "
        "one example is a set of perturbed cells of one (context, perturbation) plus a matched set of control cells",
    )
    g.add_argument(
        "--h5ad_path",
        nargs="+",
        default=None,
        metavar="PATH",
        help="one or more .h5ad files; data/sim_vcc.h5ad is the embedded simulated screen, generated on first use",
    )
    g.add_argument("--pert_col", default="target_gene", help="obs column with the perturbation label")
    g.add_argument("--context_col", default="cell_line", help="obs column with the context (cell line)")
    g.add_argument("--control_label", default="non-targeting", help="perturbation label of the control cells")
    g.add_argument("--cells_per_set", type=int, default=64, help="cells in a perturbed set and in its control set")
    g.add_argument("--h5ad_transform", default="auto", help="auto | log1p (raw counts: normalize_total 1e4 + log1p) | none (X used as stored)")
    g.add_argument("--gene_vocab", default=None, help="text file, one gene (Ensembl id or symbol) per line: map every file onto this gene order")
    g.add_argument(
        "--h5ad_target_sum",
        default="median",
        help="counts per cell after normalize_total (raw counts only): median (the file's median total, as scanpy and cell-eval) or a number, e.g. 1e4",
    )
    g.add_argument("--h5ad_matrix", default="X", help="the matrix to read: X | raw/X (with raw/var's genes) | layers/NAME, e.g. layers/counts")
    g.add_argument("--h5ad_in_memory", action=argparse.BooleanOptionalAction, default=False, help="load X into RAM once (compressed files)")
    g.add_argument("--eval_perts", default=None, help="text file of held-out perturbations, one per line")
    g.add_argument("--eval_frac", type=float, default=0.0, help="hold out this seeded fraction of the perturbations (0 and no --eval_perts: 0.2)")
    g.add_argument(
        "--eval_contexts",
        nargs="+",
        default=None,
        metavar="CONTEXT",
        help=(
            "hold the eval perturbations out in these contexts only; they train in the others (context transfer). "
            "Default: held out in every context (unseen perturbations)"
        ),
    )
    g.add_argument(
        "--cell_eval",
        default="vcc",
        help=(
            "after training, predict every held-out group at its real size and score it with cell-eval itself, beside both baselines: "
            "off | vcc (MAE, PDS, DES) | minimal | full (all of cell-eval's metrics)"
        ),
    )
    g.add_argument("--cell_eval_threads", type=int, default=1, help="threads for cell-eval's differential expression")

    g = p.add_argument_group("MMD / set loss", "Per-set loss between predicted and observed cells (losses.make_set_loss)")
    g.add_argument("--set_loss", default="energy", help="energy | rbf | sinkhorn | mse (set means only)")
    g.add_argument("--mmd_estimator", default="biased", help="biased (V-statistic) | unbiased (U-statistic), for energy and rbf")
    g.add_argument("--mmd_sigmas", type=float, nargs="+", default=None, help="rbf bandwidths (default: median heuristic per set x 0.25..4)")
    g.add_argument("--sinkhorn_blur", type=float, default=0.05, help="sinkhorn blur (eps = blur^2)")
    g.add_argument("--sinkhorn_iters", type=int, default=50)
    g.add_argument(
        "--set_loss_state_parity", action=argparse.BooleanOptionalAction, default=False, help="halve the biased energy distance (geomloss / STATE convention)"
    )
    g.add_argument("--mean_mse_weight", type=float, default=0.0, help="add this weight x MSE between the set means (pseudobulks)")
