"""Run by tests/test_parallel.py, alone or under torchrun (`-m tests.cellset_eval_worker H5AD OUT`): one cell-set eval pass of a fixed model.

Each process reads its own round-robin share of the held-out sets (`cells.sets`); the metrics must
still cover every held-out group exactly once, so N processes report what one process reports.
Rank 0 writes the metrics, the (context, perturbation) key of every set the gathered records hold,
and the number of held-out groups to OUT as JSON.
"""

import json
import sys

import torch

import datasets
import engine
import models
from cells.sets import CellSetConfig
from losses import SetLossConfig
from tasks.cellset import make_cellset_task
from utils.device import make_runtime


def main(h5ad_fpath: str, out_fpath: str) -> None:
    runtime = make_runtime("cpu", parallel="auto")
    config = datasets.DataConfig(data_set="h5ad", batch_size=4, seed=0, cells=CellSetConfig(h5ad_path=[h5ad_fpath], cells_per_set=8, eval_frac=0.5))
    data = datasets.build_data(config, runtime.rank, runtime.world_size)
    cells = data.cells
    torch.manual_seed(0)
    model = models.create_model("set_transformer_tiny", n_genes=cells.n_genes, n_perts=cells.n_perts, n_contexts=cells.n_contexts)
    task = make_cellset_task(SetLossConfig(), cells)
    metrics = engine.evaluate(model, task, data, runtime)
    acc = task.make_eval_accumulator()  # the same pass again, to see which sets the gathered records hold
    with torch.no_grad():
        for batch in data.eval_batches():
            acc.add(task.eval_outputs(model, batch), batch)
    keys = [(r.context, r.pert) for r in runtime.gather_objects(acc.partial().records)]
    if runtime.is_main:
        with open(out_fpath, "w") as fd:
            json.dump({"metrics": metrics, "keys": keys, "n_eval_groups": len(cells.eval_groups), "world_size": runtime.world_size}, fd)
    cells.close()
    runtime.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
