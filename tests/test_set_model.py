"""Set transformer (models/set_model.py) and the cell-set task (tasks/cellset.py)."""

import numpy as np
import pytest
import torch

import losses
import models
from tasks.base import reduce_eval
from tasks.cellset import CellSetTask
from utils.device import make_runtime

N_GENES, N_PERTS, N_CONTEXTS = 6, 4, 2
GENE_NAMES = ["A", "B", "C", "D", "E", "F"]
PERT_NAMES = ["ctrl", "A", "B", "Z"]  # index 0 is the control; "Z" targets no measured gene


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model("set_transformer_tiny", n_genes=N_GENES, n_perts=N_PERTS, n_contexts=N_CONTEXTS, **kw)


def _batch(b=4, s=8, seed=0, effect=2.0) -> dict[str, torch.Tensor]:
    """Controls ~ U(0, 1); perturbation p shifts gene p - 1 up by `effect` (plus fresh cell noise)."""
    gen = torch.Generator().manual_seed(seed)
    pert = torch.arange(b) % (N_PERTS - 1) + 1
    ctrl = torch.rand(b, s, N_GENES, generator=gen)
    target = torch.rand(b, s, N_GENES, generator=gen)
    target[torch.arange(b), :, pert - 1] += effect
    return {"ctrl": ctrl, "target": target, "pert": pert, "cell_line": torch.arange(b) % N_CONTEXTS, "_mask": torch.ones(b, dtype=torch.bool)}


def test_registered_and_forward_shapes_residual_at_init():
    assert "set_transformer" in models.list_models("set_transformer")
    model = _model()
    batch = _batch(b=3, s=5)
    pred = model(batch["ctrl"], batch["pert"], batch["cell_line"])
    assert pred.shape == (3, 5, N_GENES) and pred.dtype == torch.float32
    torch.testing.assert_close(pred, batch["ctrl"], rtol=0, atol=0)  # zero-initialised output layer


def test_relu_output_clamps_negative_predictions():
    model = _model(relu_output=True)
    ctrl = torch.randn(2, 5, N_GENES)
    pred = model(ctrl, torch.tensor([1, 2]), torch.tensor([0, 1]))
    torch.testing.assert_close(pred, ctrl.clamp_min(0))


def test_permutation_equivariant_over_cells():
    model = _model()
    with torch.no_grad():
        model.decoder.fc2.weight.normal_(std=0.1)  # make the output depend on the attention
    batch = _batch(b=2, s=6)
    perm = torch.randperm(6)
    pred = model(batch["ctrl"], batch["pert"], batch["cell_line"])
    pred_perm = model(batch["ctrl"][:, perm], batch["pert"], batch["cell_line"])
    torch.testing.assert_close(pred_perm, pred[:, perm], rtol=1e-5, atol=1e-5)
    # The condition matters: another perturbation gives another prediction.
    other = model(batch["ctrl"], batch["pert"] % (N_PERTS - 1) + 1, batch["cell_line"])
    assert not torch.allclose(other, pred)


def test_a_few_steps_reduce_the_energy_loss():
    model = _model()
    task = CellSetTask(losses.make_set_loss("energy"), n_perts=N_PERTS, control_index=0, gene_names=GENE_NAMES, pert_names=PERT_NAMES)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _batch(b=6, s=8)
    first = None
    for _step in range(40):
        loss, extra = task.train_loss(model, batch)
        assert loss.ndim == 0 and extra["mse_mean"].ndim == 0
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(task.train_loss(model, batch)[0])
    assert final < 0.5 * first, (first, final)


def test_train_loss_ignores_masked_rows():
    model = _model()
    task = CellSetTask(losses.make_set_loss("rbf"), n_perts=N_PERTS, control_index=0, gene_names=GENE_NAMES, pert_names=PERT_NAMES)
    batch = _batch(b=4)
    batch["_mask"] = torch.tensor([True, True, False, False])
    padded = {k: v.clone() for k, v in batch.items()}
    padded["target"][2:] = 1e3  # finite garbage in padding rows
    padded["ctrl"][2:] = -50.0
    valid = {k: v[:2] for k, v in batch.items()}
    loss_pad, extra_pad = task.train_loss(model, padded)
    loss_valid, extra_valid = task.train_loss(model, valid)
    torch.testing.assert_close(loss_pad, loss_valid)
    torch.testing.assert_close(extra_pad["mse_mean"], extra_valid["mse_mean"])
    # An all-padding batch gives 0, not NaN.
    padded["_mask"][:] = False
    assert float(task.train_loss(model, padded)[0].detach()) == 0.0


def _eval_batches(n_sets_per_pert=2, s=10, effect=2.0) -> list[dict[str, torch.Tensor]]:
    """Context 0 only: sets for perts 1..3 and one control set; the last batch carries padding rows."""
    perts = [p for p in range(1, N_PERTS) for _ in range(n_sets_per_pert)] + [0]
    gen = torch.Generator().manual_seed(1)
    b = len(perts)
    ctrl = torch.rand(b, s, N_GENES, generator=gen)
    target = torch.rand(b, s, N_GENES, generator=gen)
    pert = torch.tensor(perts)
    for i, p in enumerate(perts):
        if p > 0:
            target[i, :, p - 1] += effect
    full = {"ctrl": ctrl, "target": target, "pert": pert, "cell_line": torch.zeros(b, dtype=torch.long), "_mask": torch.ones(b, dtype=torch.bool)}
    first = {k: v[:4] for k, v in full.items()}
    last = {k: torch.cat([v[4:], v[:1]]) for k, v in full.items()}  # one padding row copied from row 0 ...
    last["pert"][-1] = 3
    last["cell_line"][-1] = 1  # ... in an otherwise unseen context: it must not create a group
    last["_mask"][-1] = False
    return [first, last]


def test_eval_accumulator_perfect_prediction_and_baselines():
    task = CellSetTask(
        losses.make_set_loss("energy"),
        n_perts=N_PERTS,
        control_index=0,
        gene_names=GENE_NAMES,
        pert_names=PERT_NAMES,
        train_pert_mean_g=np.full(N_GENES, 0.5),
    )
    acc = task.make_eval_accumulator()
    for batch in _eval_batches():
        acc.add({"pred": batch["target"].clone(), "set_loss": torch.zeros(batch["pert"].shape[0])}, batch)
    res = reduce_eval(acc, make_runtime("cpu"))
    assert res["n_examples"] == 7.0 and res["n_perts_eval"] == 3.0
    assert res["mae"] == 0.0 and res["pds"] == 1.0 and res["des"] == 1.0
    assert res["baseline_ctrl_mae"] > 0.1 and res["baseline_pert_mae"] > 0.1
    assert 0.0 < res["baseline_ctrl_pds"] <= 1.0 and 0.0 < res["baseline_pert_pds"] <= 1.0
    assert res["score_mae"] == 1.0


def test_eval_accumulator_with_model_outputs():
    model = _model()
    task = CellSetTask(losses.make_set_loss("energy"), n_perts=N_PERTS, control_index=0, gene_names=GENE_NAMES, pert_names=PERT_NAMES)
    acc = task.make_eval_accumulator()
    for batch in _eval_batches():
        with torch.no_grad():
            outputs = task.eval_outputs(model, batch)
        assert outputs["pred"].shape == batch["target"].shape and outputs["set_loss"].shape == batch["pert"].shape
        acc.add(outputs, batch)
    res = reduce_eval(acc, make_runtime("cpu"))
    # At init the model predicts the control cells of each set: its pseudobulk is the mean of those sets' controls.
    first, last = _eval_batches()
    full = {k: torch.cat([first[k], last[k][:-1]]) for k in first}  # the valid rows
    want = np.mean(
        [(full["ctrl"][full["pert"] == p].mean(dim=(0, 1)) - full["target"][full["pert"] == p].mean(dim=(0, 1))).abs().mean().item() for p in (1, 2, 3)]
    )
    assert res["mae"] == pytest.approx(want, rel=1e-5)
    assert "baseline_pert_mae" not in res
    assert res["set_loss"] > 0


def test_task_rejects_bad_configuration():
    with pytest.raises(ValueError, match="control_index=7"):
        CellSetTask(losses.make_set_loss("mse"), n_perts=N_PERTS, control_index=7, gene_names=GENE_NAMES, pert_names=PERT_NAMES)
    with pytest.raises(ValueError, match="pert_names has 4 names but n_perts=5"):
        CellSetTask(losses.make_set_loss("mse"), n_perts=5, control_index=0, gene_names=GENE_NAMES, pert_names=PERT_NAMES)
