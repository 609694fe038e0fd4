"""Virtual Cell Challenge submissions from a set model's checkpoint (`python -m tools.vcc_export` is the command line).

For every row of `pert_counts.csv` (`target_gene,n_cells`), exactly `n_cells` cells are predicted in `context` from seeded sets of
that context's control cells (read from the training files, or `h5ad_paths`, with the checkpoint's transform and gene order); the
control row (or `n_controls`) gets real control cells. Genes are written in the order of `genes` (default: the model's). A
perturbation the model has no embedding for stops the export unless `unseen="controls"` (its cells are then its control sets,
unchanged: the mean-of-controls guess, logged). The file is checked as `cell-eval prep` checks it (`cells.submission.validate`).
"""

import dataclasses
import logging
import os
import tempfile

import numpy as np
import torch

import models
from cells import submission
from cells.sets import DEFAULT_EVAL_FRAC, make_cellset_data
from tasks.cellset import predict_perturbations
from utils import checkpoint as ckpt
from utils.device import make_runtime

log = logging.getLogger("train")


def load_model(state: dict, meta: dict, use_ema: bool) -> torch.nn.Module:
    flags = state["args"]
    kwargs = {"n_genes": len(meta["gene_names"]), "n_perts": len(meta["pert_names"]), "n_contexts": len(meta["context_names"])}
    model = models.create_model(flags["model"], **kwargs, dropout=flags.get("drop_rate"))
    key = "model_ema" if use_ema else "model"
    if key not in state:
        raise ValueError(f"{key!r} is not in the checkpoint; drop --ema" if use_ema else "the checkpoint holds no model weights")
    ckpt.load_model_state(model, state[key], source="--checkpoint", what="set model")
    return model


def open_checkpoint_data(state: dict, tmp_dpath: str, h5ad_paths: list[str] | None = None, *, held_out: bool = False):
    """The checkpoint's files (or `h5ad_paths`) as `CellSetData`, read with its columns, matrix, transform and gene order; with
    `held_out`, its held-out split too (the same perturbations and contexts as in training)."""
    flags, meta = state["args"], state["data"]
    vocab_fpath = os.path.join(tmp_dpath, "genes.txt")
    with open(vocab_fpath, "w") as fd:
        fd.write("\n".join(meta["gene_names"]) + "\n")
    split = {}
    if held_out:
        split = dict(eval_perts=flags.get("eval_perts"), eval_frac=flags["eval_frac"], eval_contexts=flags["eval_contexts"], seed=flags["seed"])
        if split["eval_perts"] is None and not split["eval_frac"]:
            split["eval_frac"] = DEFAULT_EVAL_FRAC  # as training resolved it (`CellSetConfig.get_eval_frac`)
    return make_cellset_data(
        h5ad_paths or flags["h5ad_path"],
        pert_col=flags["pert_col"],
        context_col=flags["context_col"],
        control_label=meta["control_label"],
        cells_per_set=meta["cells_per_set"],
        batch_size=1,
        transform=flags["h5ad_transform"],
        matrix=flags.get("h5ad_matrix", "X"),
        target_sum=flags.get("h5ad_target_sum", 1e4),  # runs from before the flag normalized to 1e4
        gene_vocab=vocab_fpath,
        **split,
    )


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    checkpoint: str
    pert_counts: str
    context: str
    out: str
    genes: str | None = None
    h5ad_path: list[str] | None = None
    unseen: str = "error"  # error | controls
    n_controls: int | None = None
    ema: bool = False
    seed: int = 0
    device: str = "cpu"


def export(args: ExportRequest) -> str:
    """Predict, build, validate and write the submission `.h5ad`; returns its path. Bad inputs raise ValueError / FileNotFoundError."""
    state = ckpt.load_file(args.checkpoint, what="--checkpoint")
    meta = state.get("data")
    if not isinstance(meta, dict) or "pert_names" not in meta:
        raise ValueError(f"--checkpoint {args.checkpoint!r} records no gene/perturbation vocabulary (not a set model, or saved before it was stored)")
    if args.context not in meta["context_names"]:
        raise ValueError(f"--context {args.context!r} is not one of the model's contexts {meta['context_names']}")
    if args.unseen not in ("error", "controls"):
        raise ValueError(f"--unseen {args.unseen!r} is not one of error, controls")
    if args.n_controls is not None and args.n_controls < 1:
        raise ValueError(f"--n_controls must be >= 1, got {args.n_controls} (a submission needs control cells)")
    control = meta["control_label"]
    counts = submission.read_pert_counts(args.pert_counts)
    genes = submission.read_gene_list(args.genes) if args.genes else list(meta["gene_names"])
    if sorted(genes) != sorted(meta["gene_names"]):
        missing = sorted(set(genes) - set(meta["gene_names"]))
        raise ValueError(f"--genes lists {len(missing)} genes the model does not predict (e.g. {missing[:5]}); train with --gene_vocab on this list")
    index = {p: i for i, p in enumerate(meta["pert_names"])}
    unseen = [p for p in counts if p != control and p not in index]
    if unseen and args.unseen == "error":
        raise ValueError(
            f"{len(unseen)} perturbations of --pert_counts have no embedding in the model (e.g. {unseen[:5]}); "
            "pass --unseen controls to predict them as their control cells"
        )
    for p in unseen:
        log.warning("unseen perturbation %s: its %d cells are control sets, unchanged (--unseen controls)", p, counts[p])
    runtime = make_runtime(args.device)
    model = load_model(state, meta, args.ema).to(runtime.device)
    with tempfile.TemporaryDirectory() as tmp:
        cells = open_checkpoint_data(state, tmp, args.h5ad_path)
        cells.batch_size = int(state["args"].get("batch_size", 8))
        wanted = {index.get(p, meta["pert_names"].index(control)): n for p, n in counts.items() if p != control}
        pred = predict_perturbations(model, cells, runtime, args.context, wanted, seed=args.seed)
        ctrl_ng = cells.read_control_cells(cells.context_names.index(args.context))
        cells.close()
    n_ctrl = counts.get(control, args.n_controls or min(len(ctrl_ng), 1000))
    rng = np.random.default_rng(args.seed)
    by_pert = {control: ctrl_ng[rng.choice(len(ctrl_ng), n_ctrl, replace=n_ctrl > len(ctrl_ng))]}
    by_pert.update({p: pred[index.get(p, meta["pert_names"].index(control))] for p in counts if p != control})
    order = np.array([meta["gene_names"].index(g) for g in genes])
    adata = submission.build({p: x[:, order] for p, x in by_pert.items()}, genes)
    submission.validate(adata, counts, genes, control_label=control)
    adata.write_h5ad(args.out)
    log.info("wrote %s: %d cells (%d perturbations + %d %s cells), %d genes; valid", args.out, adata.n_obs, len(by_pert) - 1, n_ctrl, control, len(genes))
    return args.out
