"""Bad inputs fail at start-up with exit code 2 and one line that names the bad value and the fix, never a traceback.

Rows run `main.cli` in-process (what `python main.py` runs, minus ten seconds of imports); the SPMD row needs its own process (a device count, and SPMD mode is
process-wide), which also checks the real `__main__` path.
"""

import os
import re
import resource
import shutil
import signal
import sys

import pytest

import main
from tests import proc
from tests.bad_input_cases import CASES  # its `files` fixture is a plugin of the root conftest.py
from utils import checkpoint as ckpt
from utils import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    argv = [
        "main.py",
        "--device",
        "xla",
        "--parallel",
        "spmd",
        "--batch_size",
        "30",
        "--tfds_data_dir",
        digits_dir,
        "--output_dir",
        str(tmp_path / "out"),
        "--model",
        "tiny_cnn",
    ]
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}
    r = proc.run([sys.executable, *argv], cwd=REPO, env=env, timeout=300)
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
    assert main.get_exit_code(ValueError("--lr must be > 0")) is None, "exit codes go by type and phase, not by where the frame was"
    assert main.get_exit_code(errors.BadInputError("--lr must be > 0")) == 2
    assert main.get_exit_code(errors.OutputWriteError("disk full")) == 4
    assert main.get_exit_code(KeyError("x")) is None
    with pytest.raises(errors.BadInputError, match="--lr must be > 0"), errors.startup():
        raise ValueError("--lr must be > 0")
    with pytest.raises(KeyError), errors.startup():
        raise KeyError("a bug at start-up keeps its type")


def test_corrupt_tfrecord_mid_training_names_the_dataset(digits_dir, tmp_path, capsys):
    """A damaged train shard is found while reading, not at start-up: still one `error:` line (exit 2) naming the dataset, the split and the directory."""
    data_dpath = tmp_path / "tfds"
    shutil.copytree(digits_dir, data_dpath)
    shards = sorted(p for p in data_dpath.rglob("*train.tfrecord*"))
    assert shards, list(data_dpath.rglob("*"))
    raw = bytearray(shards[0].read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[i] ^= 0xFF
    shards[0].write_bytes(bytes(raw))
    rc = main.cli(
        [
            "--device",
            "cpu",
            "--tfds_data_dir",
            str(data_dpath),
            "--output_dir",
            str(tmp_path / "out"),
            "--epochs",
            "1",
            "--no-tensorboard",
            "--model",
            "tiny_cnn",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(
        r"corrupt record in sklearn_digits/1.0.0 split 'train' in .*tfds.* \(corrupted record at \d+; "
        r"damaged shard\(s\): .*sklearn_digits-train\.tfrecord-00000-of-00001\); the prepared files are damaged",
        lines[0],
    ), err[-2000:]


def _limit_file_size() -> None:
    """Child set-up: files stop growing at 256 KiB (EFBIG instead of SIGXFSZ), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_while_logging_metrics_exits_4_naming_the_file(digits_dir, tmp_path, capsys):
    """metrics.jsonl on a full device (a symlink to /dev/full: every write fails with ENOSPC): one `error:` line naming the file, exit 4."""
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("/dev/full", out / "metrics.jsonl")
    argv = ["--device", "cpu", "--tfds_data_dir", digits_dir, "--output_dir", str(out), "--epochs", "1", "--max_steps_per_epoch", "2"]
    rc = main.cli([*argv, "--no-tensorboard", "--model", "tiny_cnn", "--log_every", "1"])
    err = capsys.readouterr().err
    assert rc == 4, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert re.match(r"error: could not write .*metrics\.jsonl \(No space left on device\); free space or fix permissions", lines[0]), lines[0]


def test_full_disk_at_checkpoint_time_exits_4_and_keeps_the_earlier_checkpoint(digits_dir, tmp_path):
    """small_cnn's checkpoint (~2 MB with AdamW state) cannot be written under the limit:
    one `error:` line naming the file and the free space, exit 4, no traceback."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "main.py",
        "--device",
        "cpu",
        "--tfds_data_dir",
        digits_dir,
        "--output_dir",
        str(out),
        "--epochs",
        "1",
        "--max_steps_per_epoch",
        "2",
        "--no-tensorboard",
    ]
    r = proc.run(argv, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, preexec_fn=_limit_file_size)
    assert r.returncode == 4, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.rstrip().splitlines()[-1]
    assert re.match(r"error: could not write checkpoint .*checkpoint-00000002.pt \(.*MiB free there\); the earlier checkpoints in .* are intact", last), last
    assert not list(ckpt.list_checkpoints(str(out))) and not [f for f in os.listdir(out) if ".tmp." in f], os.listdir(out)


def test_default_warmup_fits_short_runs():
    """Without --warmup_epochs a 1-epoch run still reaches the peak LR: the default warm-up is 2 epochs but at most 20% of the run,
    and args.yaml records the value used."""
    assert main.parse_args(["--epochs", "1"]).warmup_epochs == pytest.approx(0.2)
    assert main.parse_args(["--epochs", "5"]).warmup_epochs == pytest.approx(1.0)
    assert main.parse_args(["--epochs", "15"]).warmup_epochs == 2.0
    assert main.parse_args(["--epochs", "1", "--warmup_epochs", "0.5"]).warmup_epochs == 0.5


def test_argparse_errors_print_one_usage_line(capsys):
    with pytest.raises(SystemExit) as e:
        main.parse_args(["--batch_size", "sixty"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.splitlines() == [
        "usage: main.py [--config recipe.yaml] [--flag value ...] (python main.py --help lists the flags)",
        "main.py: error: argument --batch_size: invalid int value: 'sixty'",
    ]
