"""Bad inputs fail at start-up with exit code 2 and one line that names the bad value and the fix, never a traceback.

Rows run `main.cli` in-process (what `python main.py` runs, minus ten seconds of imports); the SPMD row needs its own process (a device count, and SPMD mode is process-wide), which also checks the real `__main__` path.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

import main
import models
from utils import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_flag(flag: str) -> bool:
    return any(flag in action.option_strings for action in main.get_args_parser()._actions)


needs_h5ad = pytest.mark.skipif(not _has_flag("--h5ad_path"), reason="--data_set h5ad flags not in main.py yet")
needs_kd = pytest.mark.skipif(not _has_flag("--teacher_path"), reason="--kd flags not in main.py yet")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Inputs the rows point at: a YAML with a typo, a teacher checkpoint of tiny_cnn, a used output dir, a dir of corrupt checkpoints, an h5ad file and a gene vocab from another species."""
    dpath = tmp_path_factory.mktemp("bad_inputs")
    paths = {"tmp": str(dpath)}
    paths["yaml"] = str(dpath / "recipe.yaml")
    with open(paths["yaml"], "w") as fd:
        fd.write("epochs: 2\nlrr: 0.1\n")
    torch.manual_seed(0)
    teacher = models.create_model("tiny_cnn", num_classes=10)
    paths["teacher"] = str(dpath / "teacher.pt")
    torch.save({"model": teacher.state_dict(), "args": {"model": "tiny_cnn"}}, paths["teacher"])
    paths["used"] = str(dpath / "used")
    ckpt.save_checkpoint({"x": torch.zeros(1)}, paths["used"], 40)
    paths["corrupt"] = str(dpath / "corrupt")
    os.makedirs(paths["corrupt"])
    with open(ckpt.get_checkpoint_fpath(paths["corrupt"], 7), "wb") as fd:
        fd.write(b"PK\x03\x04 cut short")
    if _has_flag("--h5ad_path"):
        from tools import simulate_h5ad

        paths["h5ad"] = simulate_h5ad.simulate_h5ad(str(dpath / "sim.h5ad"), n_cells=400, n_genes=30, n_perts=4, seed=1)
        paths["vocab"] = str(dpath / "mouse.txt")
        with open(paths["vocab"], "w") as fd:
            fd.write("ENSMUSG00000000001\nXist\n")
    return paths


def _h5ad(files, *extra: str) -> list[str]:
    return ["--data_set", "h5ad", "--h5ad_path", files.get("h5ad", "sim.h5ad"), "--model", "set_transformer_tiny", *extra]


# (id, argv builder (digits_dir, files) -> argv, regex the one-line message must match, marks)
CASES = [
    (
        "missing_data_dir",
        lambda d, f: ["--data_set", "tfds", "--tfds_name", "sklearn_digits", "--tfds_data_dir", "/nonexistent/tfds"],
        r"--tfds_data_dir '/nonexistent/tfds' does not exist; point it at the directory that holds prepared TFDS datasets",
        (),
    ),
    (
        "unknown_tfds_dataset",
        lambda d, f: ["--data_set", "tfds", "--tfds_name", "sklearn_digitz", "--tfds_data_dir", d],
        r"TFDS dataset 'sklearn_digitz' is not prepared in --tfds_data_dir '.*'; did you mean sklearn_digits\?",
        (),
    ),
    ("missing_tfds_name", lambda d, f: ["--data_set", "tfds", "--tfds_data_dir", d], r"--data_set tfds needs --tfds_name \(e.g. imagenet2012, cifar10\)", ()),
    ("bad_split", lambda d, f: ["--tfds_data_dir", d, "--tfds_train_split", "trian[:90%]"], r"bad split 'trian\[:90%\]' for TFDS dataset sklearn_digits/1.0.0: .*splits are train, test", ()),
    ("unknown_pp_op", lambda d, f: ["--tfds_data_dir", d, "--big_vision_pp_train", 'decode|resise(32)|keep("image", "label")'], r"unknown pp op 'resise'; did you mean resize", ()),
    (
        "pp_op_wrong_argument",
        lambda d, f: ["--tfds_data_dir", d, "--big_vision_pp_train", "decode|resize(32, sise=2)"],
        r"pp op 'resize\(32, sise=2\)': got an unexpected keyword argument 'sise'; signature is resize\(",
        (),
    ),
    (
        "pp_op_bad_value",
        lambda d, f: ["--tfds_data_dir", d, "--big_vision_pp_eval", "decode|central_crop(-3)"],
        r"pp op central_crop: crop_size must be a positive int or a pair \(h, w\) of positive ints, got -3",
        (),
    ),
    ("unknown_model", lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnm"], r"unknown model 'tiny_cnm'; did you mean tiny_cnn", ()),
    ("unknown_optimizer", lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnn", "--opt", "adamww"], r"unknown optimizer 'adamww'; did you mean adamw", ()),
    ("unknown_data_set", lambda d, f: ["--data_set", "imagenet"], r"--data_set 'imagenet' is not one of digits, tfds, h5ad", ()),
    ("missing_h5ad_file", lambda d, f: _h5ad({"h5ad": "/nonexistent/screen.h5ad"}), r"h5ad file not found: /nonexistent/screen.h5ad; fix --h5ad_path", (needs_h5ad,)),
    ("h5ad_missing_pert_column", lambda d, f: _h5ad(f, "--pert_col", "perturbation"), r"no column 'perturbation' \(--pert_col\)", (needs_h5ad,)),
    (
        "h5ad_control_label_absent",
        lambda d, f: _h5ad(f, "--control_label", "ctrl"),
        r"control label 'ctrl' \(--control_label\) has no cells in obs\['target_gene'\]; most frequent labels",
        (needs_h5ad,),
    ),
    ("h5ad_gene_vocab_no_overlap", lambda d, f: _h5ad(f, "--gene_vocab", f["vocab"]), r"gene vocab .*mouse.txt shares no gene with .*sim.h5ad", (needs_h5ad,)),
    (
        "teacher_of_another_arch",
        lambda d, f: ["--tfds_data_dir", d, "--model", "tiny_cnn", "--kd", "--distillation_type", "soft", "--teacher_arch", "small_cnn", "--teacher_path", f["teacher"]],
        r"--teacher_path .*teacher.pt is a checkpoint of 'tiny_cnn' but --teacher_arch is 'small_cnn'; pass --teacher_arch tiny_cnn",
        (needs_kd,),
    ),
    (
        "teacher_path_missing",
        lambda d, f: ["--kd", "--distillation_type", "soft", "--teacher_arch", "tiny_cnn", "--teacher_path", "/nonexistent/teacher.pt"],
        r"--teacher_path '/nonexistent/teacher.pt' does not exist; pass a checkpoint-\*.pt from a teacher run",
        (needs_kd,),
    ),
    (
        "resume_path_missing",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["tmp"] + "/fresh", "--resume", "/nonexistent/checkpoint-00000010.pt"],
        r"--resume '/nonexistent/checkpoint-00000010.pt' does not exist; pass a checkpoint-\*.pt file or --resume auto",
        (),
    ),
    (
        "resume_auto_all_corrupt",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["corrupt"], "--resume", "auto"],
        r"--resume auto: none of the 1 checkpoint\(s\) in .*corrupt loads \(checkpoint-00000007.pt\); delete them to start over, or pass --resume PATH",
        (),
    ),
    (
        "output_dir_of_another_run",
        lambda d, f: ["--tfds_data_dir", d, "--output_dir", f["used"]],
        r"--output_dir '.*used' already holds checkpoints \(newest checkpoint-00000040.pt\) of an earlier run; add --resume auto to continue it, or pick a new --output_dir",
        (),
    ),
    ("yaml_unknown_key", lambda d, f: ["--config", f["yaml"]], r"unknown key 'lrr' in .*recipe.yaml; did you mean 'lr'\?", ()),
    ("yaml_missing", lambda d, f: ["--config", "/nonexistent/recipe.yaml"], r"--config '/nonexistent/recipe.yaml' does not exist", ()),
    ("zero_epochs", lambda d, f: ["--epochs", "0"], r"--epochs must be > 0, got 0", ()),
    ("negative_lr", lambda d, f: ["--lr", "-0.1"], r"--lr must be > 0, got -0.1", ()),
    ("wrong_type", lambda d, f: ["--batch_size", "sixty"], r"argument --batch_size: invalid int value: 'sixty'", ()),
    ("unknown_device", lambda d, f: ["--device", "tpu"], r"--device 'tpu' is not one of auto, cpu, cuda, xla", ()),
    (
        "cuda_missing",
        lambda d, f: ["--device", "cuda"],
        r"--device cuda but torch.cuda.is_available\(\) is False; use --device cpu or auto",
        (pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"),),
    ),
]


@pytest.mark.parametrize("make_argv, message", [pytest.param(make, msg, id=name, marks=marks) for name, make, msg, marks in CASES])
def test_bad_input_exits_2_with_one_line(make_argv, message, digits_dir, files, tmp_path, capsys):
    argv = ["--device", "cpu", "--output_dir", str(tmp_path / "out"), "--epochs", "1", "--no-tensorboard", *make_argv(digits_dir, files)]
    rc = main.cli(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if re.match(r"^(main\.py: )?error: ", line)]
    assert len(errors) == 1, err[-2000:]
    assert re.search(message, errors[0]), errors[0]
    assert not list(ckpt.list_checkpoints(str(tmp_path / "out"))), "nothing trained"


def test_batch_size_not_divisible_over_devices_through_the_real_cli(digits_dir, tmp_path):
    """`python main.py` itself: one `error:` line on stderr, exit code 2, no traceback."""
    argv = ["main.py", "--device", "xla", "--parallel", "spmd", "--batch_size", "30", "--tfds_data_dir", digits_dir, "--output_dir", str(tmp_path / "out"), "--model", "tiny_cnn"]
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}
    r = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == "error: --batch_size 30 does not divide over 1 process(es) x 4 device(s) each; pick a multiple of 4, e.g. 32"


def test_a_bug_keeps_its_traceback():
    """A user-facing type raised inside training is a bug: `cli` re-raises it (the interpreter prints the traceback, exit 1)."""
    import engine
    from utils import preemption

    class Boom(engine.Trainer):
        def __init__(self):
            self.stop = preemption.StopSignals()

        def _fit(self):
            raise ValueError("shape bug in a model")

    with pytest.raises(ValueError, match="shape bug"):
        try:
            Boom().fit()
        except ValueError as e:
            assert main.get_exit_code(e) is None
            raise
    assert main.get_exit_code(ValueError("--lr must be > 0")) == 2
    assert main.get_exit_code(KeyError("x")) is None
