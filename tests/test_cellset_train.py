"""End to end through main.py on simulated `.h5ad` cell sets: CPU eager and the XLA (PJRT CPU) device, resume position, the embedded simulated screen,
and clear errors on bad inputs."""

import json
import logging
import math
import re

import numpy as np
import pytest
import torch
import yaml

import datasets
import main
from cells import simulate as simulate_h5ad
from utils import checkpoint as ckpt
from utils import errors

TINY_SIM = {"n_cells": 1500, "n_genes": 40, "n_contexts": 2, "n_perts": 8, "genes_per_effect": 4, "umis_per_cell": 1000, "seed": 3, "chunk_cells": 512}
METRICS = ("mae", "pds", "des", "baseline_ctrl_mae", "baseline_ctrl_pds", "baseline_pert_mae", "baseline_pert_pds")


@pytest.fixture(scope="module")
def sim_fpath(tmp_path_factory) -> str:
    return simulate_h5ad.simulate_h5ad(str(tmp_path_factory.mktemp("cells") / "tiny.h5ad"), **TINY_SIM)


def _args(h5ad_fpath: str, out_dir, *extra: str) -> list[str]:
    return [
        "--data_set",
        "h5ad",
        "--h5ad_path",
        h5ad_fpath,
        "--model",
        "set_transformer_tiny",
        "--cells_per_set",
        "8",
        "--batch_size",
        "4",
        "--output_dir",
        str(out_dir),
        "--log_every",
        "5",
        "--no-tensorboard",
        "--cell_eval",
        "off",  # tests that score with cell-eval pass --cell_eval again (the last one counts)
        *extra,
    ]


def test_cpu_run_reports_cell_metrics_and_baselines_and_writes_a_checkpoint(sim_fpath, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    argv = _args(sim_fpath, out, "--device", "cpu", "--epochs", "2", "--set_loss", "energy", "--mean_mse_weight", "1.0", "--cell_eval", "vcc")
    summary = main.main(argv)
    # Full-data scoring by cell-eval itself: the model and both baselines, every cell of the 4 held-out groups.
    for key in ("mae", "discrimination_score_l1", "overlap_at_N", "baseline_ctrl_mae", "baseline_pert_discrimination_score_l1", "score_mae"):
        assert math.isfinite(summary[f"cell_eval/{key}"]), (key, summary)
    assert summary["cell_eval/n_perts"] == 4 and summary["cell_eval/n_cells"] > 4 * 8, "real group sizes, not one set each"
    assert (out / "cell_eval" / "model" / "line0" / "results.csv").is_file()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("cell_eval/mae" in row for row in logged)
    for key in METRICS:
        assert math.isfinite(summary[key]), (key, summary)
    assert 0.0 < summary["pds"] <= 1.0 and 0.0 <= summary["des"] <= 1.0
    # No --eval_perts / --eval_frac: a seeded 20% of the 8 perturbations (2) held out in both contexts.
    assert summary["n_perts_eval"] == 4 and summary["n_examples"] == 4
    assert any("holding out a seeded --eval_frac 0.2" in r.getMessage() for r in caplog.records)
    steps = [s for s, _ in ckpt.list_checkpoints(str(out))]
    assert steps == [summary["steps"]] and summary["steps"] > 0
    state = ckpt.load_file(ckpt.list_checkpoints(str(out))[0][1])
    assert state["model"]["pert_embed.weight"].shape == (9, 32)  # 8 perturbations + the control, d_model 32
    assert yaml.safe_load((out / "args.yaml").read_text())["data_set"] == "h5ad"


def test_context_transfer_split_holds_perturbations_out_in_one_context_only(sim_fpath):
    data = datasets.build_data(main.parse_settings(_args(sim_fpath, "unused", "--eval_frac", "0.5", "--eval_contexts", "line1")).data)
    cells = data.cells
    held_out = {cells.pert_names.index(p) for p in cells.eval_pert_names}
    assert len(held_out) == 4 and data.info["held_out_in"] == ["line1"]
    assert {(cells.context_names[g.context], g.pert) for g in cells.eval_groups} == {("line1", p) for p in held_out}
    assert held_out <= {g.pert for g in cells.train_groups if cells.context_names[g.context] == "line0"}  # seen in the other context
    assert not held_out & {g.pert for g in cells.train_groups if cells.context_names[g.context] == "line1"}
    # The mean-of-perturbations baseline averages line1's training perturbations only.
    mean_g = cells.get_train_pert_mean()
    assert mean_g.shape == (cells.n_genes,) and np.all(np.isfinite(mean_g))
    with pytest.raises(ValueError, match=r"--eval_contexts: context 'line9' has no cells.*close matches: \['line1'"):
        datasets.build_data(main.parse_settings(_args(sim_fpath, "unused", "--eval_contexts", "line9")).data)


def test_train_batches_resume_mid_epoch_at_the_same_batch(sim_fpath):
    data = datasets.build_data(main.parse_settings(_args(sim_fpath, "unused")).data)
    full = list(data.train_batches(1))
    assert len(full) == data.steps_per_epoch >= 3
    resumed = list(data.train_batches(1, 2))
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.xla
def test_xla_run_does_not_recompile_after_warmup(sim_fpath, tmp_path, xla_device, caplog):
    caplog.set_level(logging.INFO)
    extra = ["--device", "xla", "--epochs", "3", "--max_steps_per_epoch", "3", "--eval_every_epochs", "1", "--save_every_epochs", "1", "--log_every", "2"]
    summary = main.main(_args(sim_fpath, tmp_path / "xla", *extra))
    counts = [int(m.group(1)) for r in caplog.records if (m := re.search(r"xla: (\d+) graphs compiled so far", r.getMessage()))]
    assert len(counts) == 3 and counts[0] == counts[-1], f"recompiled after warm-up: {counts}"
    assert not [r for r in caplog.records if "new compile" in r.getMessage()]
    for key in METRICS:
        assert math.isfinite(summary[key]), (key, summary)
    assert ckpt.list_checkpoints(str(tmp_path / "xla"))


def test_embedded_screen_is_simulated_on_first_use_but_a_missing_user_file_is_an_error(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(simulate_h5ad, "EMBEDDED_KWARGS", TINY_SIM)
    data = datasets.build_data(main.parse_settings(_args(simulate_h5ad.EMBEDDED_FPATH, "unused")).data)
    assert (tmp_path / simulate_h5ad.EMBEDDED_FPATH).is_file() and data.info["n_cells"] == TINY_SIM["n_cells"]
    assert any("generating the embedded simulated screen" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match=r"h5ad file not found: data/my_screen\.h5ad"):
        datasets.build_data(main.parse_settings(_args("data/my_screen.h5ad", "unused")).data)


def test_missing_h5ad_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.h5ad")
    with pytest.raises(errors.BadInputError, match=re.escape(missing)):  # a FileNotFoundError at start-up is bad input (exit 2)
        main.main(_args(missing, tmp_path / "out", "--device", "cpu"))


def test_missing_perturbation_column_lists_close_matches(sim_fpath, tmp_path):
    with pytest.raises(ValueError, match=r"obs has no column 'target_genes' \(--pert_col\).*close matches: \['target_gene'"):
        main.main(_args(sim_fpath, tmp_path / "out", "--device", "cpu", "--pert_col", "target_genes"))


def test_absent_control_label_is_an_error_with_close_matches(sim_fpath, tmp_path):
    with pytest.raises(ValueError, match=r"control label 'non-targetting' \(--control_label\) has no cells.*close matches: \['non-targeting'"):
        main.main(_args(sim_fpath, tmp_path / "out", "--device", "cpu", "--control_label", "non-targetting"))


def test_gene_vocab_without_overlap_is_an_error(sim_fpath, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("FOO1\nFOO2\nENSG99999999999\n")
    with pytest.raises(ValueError, match=r"shares no gene with"):
        main.main(_args(sim_fpath, tmp_path / "out", "--device", "cpu", "--gene_vocab", str(vocab)))


def test_cell_flags_are_checked_at_start_up(sim_fpath, tmp_path, capsys):
    for bad, message in [
        (["--set_loss", "enrgy"], "did you mean 'energy'"),
        (["--h5ad_transform", "log"], "is not one of auto, log1p, none"),
        (["--num_classes", "10"], "apply to image models"),
        (["--eval_frac", "0.2", "--eval_perts", "x.txt"], "either --eval_perts or --eval_frac"),
    ]:
        with pytest.raises(SystemExit):
            main.parse_args(_args(sim_fpath, tmp_path, *bad))
        assert message in capsys.readouterr().err, bad
    with pytest.raises(SystemExit):
        main.parse_args(["--h5ad_path", sim_fpath])
    assert "add --data_set h5ad" in capsys.readouterr().err


def test_recipe_starts_with_its_command_and_parses():
    fpath = "train/recipes/cellset_sim.yaml"
    with open(fpath) as fd:
        assert fd.readline().strip() == f"# python main.py --config {fpath}"
    args = main.parse_args(["--config", fpath])
    assert args.data_set == "h5ad" and args.h5ad_path == [simulate_h5ad.EMBEDDED_FPATH] and args.model == "set_transformer"
