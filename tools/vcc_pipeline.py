"""The whole Virtual Cell Challenge job on the embedded simulated screen, in one command: train, score, export, validate, pack, score the file.

    python -m tools.vcc_pipeline [--output_dir output/vcc_sim] [--seed 0] [-- extra main.py flags]

1. `main.py --config train/recipes/cellset_sim.yaml`: trains the set model; at the end cell-eval scores every held-out cell of the
   model and of both baselines (mean of controls, mean of perturbations), written to `<output_dir>/cell_eval/`.
2. A `pert_counts.csv` for the held-out perturbations of the eval context (their real cell counts) and the gene list are written;
   `tools.vcc_export` predicts exactly those cells from the checkpoint, validates the file and packs it with `cell-eval prep`
   (when `zstd` and `tar` are on the PATH).
3. cell-eval scores the exported submission itself against the real held-out cells: the numbers a submission of this file gets.
"""

import csv
import json
import os
import sys
import tempfile

from cli.help import ArgumentParser

RECIPE = os.path.join("train", "recipes", "cellset_sim.yaml")


def real_held_out(state: dict, context: str):
    """The real held-out cells of `context` and its control cells, transformed and in gene order as the model saw them."""
    import numpy as np

    from cells import scoring
    from tasks.cellset_export import open_checkpoint_data

    with tempfile.TemporaryDirectory() as tmp:
        cells = open_checkpoint_data(state, tmp, held_out=True)
    ctx = cells.context_names.index(context)
    groups = []
    for g in cells.eval_groups:
        if g.context == ctx:
            real = np.empty((len(g.rows), cells.n_genes), np.float32)
            cells.files[g.file_idx].read_rows_into(g.rows.astype(np.int64), real)
            groups.append(scoring.HeldOutGroup(context, cells.pert_names[g.pert], real, real))
    ctrl = cells.read_control_cells(ctx)
    cells.close()
    return groups, ctrl, cells.gene_names


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m tools.vcc_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default=os.path.join("output", "vcc_sim"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("extra", nargs="*", help="more main.py flags, after --")
    args = p.parse_args(argv)
    import anndata
    import numpy as np

    import main as train_main
    from cells import scoring, submission
    from tasks.cellset_export import ExportRequest, export
    from utils import checkpoint as ckpt

    out = args.output_dir
    summary = train_main.main(["--config", RECIPE, "--output_dir", out, "--seed", str(args.seed), "--resume", "auto", *args.extra])
    fpath = ckpt.list_checkpoints(out)[0][1]
    state = ckpt.load_file(fpath)
    context = (state["args"].get("eval_contexts") or state["data"]["context_names"])[0]
    groups, ctrl, gene_names = real_held_out(state, context)
    counts_fpath, genes_fpath = os.path.join(out, "pert_counts.csv"), os.path.join(out, "gene_names.csv")
    with open(counts_fpath, "w", newline="") as fd:
        writer = csv.writer(fd)
        writer.writerow(["target_gene", "n_cells"])
        writer.writerows([(g.pert, len(g.real_ng)) for g in groups] + [(state["data"]["control_label"], len(ctrl))])
    with open(genes_fpath, "w") as fd:
        fd.write("\n".join(gene_names) + "\n")
    sub_fpath = export(ExportRequest(checkpoint=fpath, pert_counts=counts_fpath, context=context, out=os.path.join(out, "submission.h5ad"), genes=genes_fpath))
    packed = submission.prep(sub_fpath, genes_fpath)
    sub = anndata.read_h5ad(sub_fpath)
    control = state["data"]["control_label"]
    preds = {g.pert: np.asarray(sub[sub.obs["target_gene"] == g.pert].X) for g in groups}
    scored = [scoring.HeldOutGroup(context, g.pert, preds[g.pert], g.real_ng) for g in groups]
    from_file = scoring.score_groups(scored, {context: ctrl}, gene_names, control, os.path.join(out, "cell_eval_submission"), profile="vcc")
    report = {
        "in_loop_sampled": {k: summary[k] for k in ("mae", "pds", "des", "baseline_ctrl_mae", "baseline_pert_mae") if k in summary},
        "cell_eval_full_held_out": {k.removeprefix("cell_eval/"): v for k, v in summary.items() if k.startswith("cell_eval/")},
        "cell_eval_of_the_submission_file": from_file,
        "submission": sub_fpath,
        "packed": packed,
    }
    with open(os.path.join(out, "vcc_report.json"), "w") as fd:
        json.dump(report, fd, indent=1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
