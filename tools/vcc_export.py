"""Export a Virtual Cell Challenge submission from a set model's checkpoint, validate it, and pack it with `cell-eval prep`.

    python -m tools.vcc_export --checkpoint output/cellset_sim/checkpoint-00000570.pt --pert_counts pert_counts.csv \\
        --context line2 --out submission.h5ad [--genes gene_names.csv] [--h5ad_path controls.h5ad] [--unseen error|controls]

What is predicted and checked: `tasks/cellset_export.py`. With `--genes` and `zstd` and `tar` on the PATH, the file is packed into
`<out>.prep.vcc` by cell-eval's own `prep`.
"""

import argparse
import logging
import sys

from cli.help import ArgumentParser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser("python -m tools.vcc_export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint-*.pt of a --data_set h5ad run")
    p.add_argument("--pert_counts", required=True, help="CSV with target_gene,n_cells: the perturbations to predict and how many cells each")
    p.add_argument("--context", required=True, help="the context (cell line) to predict in; one of the checkpoint's contexts")
    p.add_argument("--out", required=True, help="the .h5ad to write")
    p.add_argument("--genes", default=None, help="gene list in submission order (the challenge's gene_names.csv); default: the model's")
    p.add_argument("--h5ad_path", nargs="+", default=None, help="files to take control cells from (default: the training files)")
    p.add_argument("--unseen", default="error", choices=("error", "controls"), help="perturbations the model has no embedding for")
    p.add_argument("--n_controls", type=int, default=None, help="control cells to include when pert_counts has no control row")
    p.add_argument("--ema", action="store_true", help="predict with the checkpoint's EMA weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args(argv)
    from cells import submission
    from tasks.cellset_export import ExportRequest, export

    try:
        out = export(ExportRequest(**vars(args)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.genes:
        packed = submission.prep(out, args.genes)
        print(f"packed {packed} with cell-eval prep" if packed else "zstd or tar not on the PATH: run `cell-eval prep` where they are")
    return 0


if __name__ == "__main__":
    sys.exit(main())
