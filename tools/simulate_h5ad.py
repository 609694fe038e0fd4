"""Write a seeded, VCC-style perturbation `.h5ad` with known effects (see `cells.simulate`).

Usage: python -m tools.simulate_h5ad OUT.h5ad --n_cells 200000 --n_genes 2000 --seed 0
"""

import logging

from cli.help import ArgumentParser


def main() -> None:
    parser = ArgumentParser("python -m tools.simulate_h5ad", description=__doc__)
    parser.add_argument("out", help="output .h5ad path")
    parser.add_argument("--n_cells", type=int, default=20_000)
    parser.add_argument("--n_genes", type=int, default=2_000)
    parser.add_argument("--n_contexts", type=int, default=2)
    parser.add_argument("--n_perts", type=int, default=48)
    parser.add_argument("--control_frac", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true", help="dense X instead of CSR")
    parser.add_argument("--log1p", action="store_true", help="store log1p(normalize_total 1e4) instead of raw counts")
    parser.add_argument("--chunk_cells", type=int, default=8_192)
    parser.add_argument("--context_col", default="cell_line")
    parser.add_argument("--genes_per_effect", type=int, default=8, help="genes moved by each perturbation besides its target")
    parser.add_argument(
        "--context_effect_sd", type=float, default=0.0, help="per-context log-normal scale of each fold change (0: effects shared exactly by all contexts)"
    )
    parser.add_argument(
        "--umis_per_cell",
        type=float,
        default=None,
        help="rescale gene means to about this many UMIs per cell (default: ~600 at 2000 genes, fewer with fewer genes)",
    )
    args = parser.parse_args()
    from cells.simulate import simulate_h5ad

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    simulate_h5ad(
        args.out,
        n_cells=args.n_cells,
        n_genes=args.n_genes,
        n_contexts=args.n_contexts,
        n_perts=args.n_perts,
        control_frac=args.control_frac,
        seed=args.seed,
        sparse=not args.dense,
        log1p=args.log1p,
        chunk_cells=args.chunk_cells,
        context_col=args.context_col,
        genes_per_effect=args.genes_per_effect,
        context_effect_sd=args.context_effect_sd,
        umis_per_cell=args.umis_per_cell,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
