"""The Slurm launcher without Slurm: the sbatch script and `--dry-run` plan, sweeps checked by main.py's parser before anything is submitted, the DDP
environment from Slurm's variables, and submitit's real local executor running a real training job that is signalled as Slurm signals it (SIGUSR2 before
the time limit: checkpoint, requeue, resume; SIGTERM from `scancel`: checkpoint, no requeue), ending with the weights of an uninterrupted run."""

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import submitit
import torch

import main
from tests import proc
from train import slurm, slurm_job, sweep
from utils import checkpoint as ckpt
from utils import device, preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_STEPS = 16  # 2 epochs x 8 steps


def _train_flags(digits_dir: str) -> list[str]:
    """The default model (small_cnn) on the embedded digits, 2 short epochs, a log line and a stop check after every step."""
    return [
        "--device", "cpu", "--tfds_data_dir", digits_dir, "--epochs", "2", "--max_steps_per_epoch", "8", "--log_every", "1", "--no-tensorboard",
        "--eval_every_epochs", "1", "--save_every_epochs", "1", "--keep_last", "5",
    ]  # fmt: skip


def _write(tmp_path, name: str, text: str) -> str:
    fpath = tmp_path / name
    fpath.write_text(text)
    return str(fpath)


def test_dry_run_prints_every_run_and_the_sbatch_script_of_one_job_array(tmp_path, capsys):
    grid = _write(tmp_path, "sweep.yaml", "grid:\n  lr: [0.001, 0.003]\n  weight_decay: [0.05, 0.1]\nname: 'lr{lr}_wd{weight_decay}'\n")
    root = tmp_path / "runs"
    launcher = ["--partition", "gpu", "--account", "proj", "--nodes", "2", "--gpus_per_node", "4", "--hours", "24", "--sweep", grid, "--dry-run"]
    rc = slurm.main([*launcher, "--", "--epochs", "3", "--batch_size", "64", "--output_dir", str(root)])
    out = capsys.readouterr().out
    assert rc == 0, out
    names = ["lr0.001_wd0.05", "lr0.001_wd0.1", "lr0.003_wd0.05", "lr0.003_wd0.1"]  # file order, the last key fastest
    for name in names:
        run_dpath = os.path.join(str(root), name)
        assert f"run {name}: {run_dpath}\n" in out
    assert (
        "  python main.py --epochs 3 --batch_size 64 --lr 0.003 --weight_decay 0.1 --output_dir " + os.path.join(str(root), names[3]) + " --resume auto\n"
        in out
    )
    for line in (
        "#SBATCH --array=0-3%4", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4", "#SBATCH --time=1440", "#SBATCH --signal=USR2@120", "#SBATCH --open-mode=append", "#SBATCH --cpus-per-task=8",
        f"#SBATCH --output={root}/submitit/%A_%a/%A_%a_0_log.out", f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}", "export SUBMITIT_EXECUTOR=slurm",
    ):  # fmt: skip
        assert line + "\n" in out, line
    srun = [x for x in out.splitlines() if x.startswith("srun ")]
    assert len(srun) == 1 and srun[0].endswith(f"{sys.executable} -u -m submitit.core._submit {root}/submitit/%j"), srun
    assert not root.exists(), "a dry run writes nothing"


def test_sweep_points_expand_in_file_order_with_their_own_dirs_and_flags_main_py_parses(tmp_path):
    text = "grid:\n  opt_betas: [[0.9, 0.95]]\n  model_ema: [true, false]\n  lr: [0.001, 0.01]\n"
    points = sweep.expand(sweep.load_sweep(_write(tmp_path, "s.yaml", text)))
    assert [p.name for p in points] == [
        "opt_betas0.9-0.95_model_emaTrue_lr0.001", "opt_betas0.9-0.95_model_emaTrue_lr0.01",
        "opt_betas0.9-0.95_model_emaFalse_lr0.001", "opt_betas0.9-0.95_model_emaFalse_lr0.01",
    ]  # fmt: skip
    assert points[2].flags == ("--opt_betas", "0.9", "0.95", "--no-model_ema", "--lr", "0.001")
    runs = sweep.make_runs(["--lr", "0.5", "--output_dir", "ignored"], points, str(tmp_path / "root"))
    assert [r.settings.optim.lr for r in runs] == [0.001, 0.01, 0.001, 0.01], "a point's flags override the base flags"
    assert [r.settings.ema.model_ema for r in runs] == [True, True, False, False]
    assert runs[0].settings.optim.opt_betas == [0.9, 0.95]
    assert [r.settings.train.output_dir for r in runs] == [str(tmp_path / "root" / p.name) for p in points]
    assert all(r.argv[-2:] == ("--resume", "auto") and r.argv.count("--output_dir") == 1 for r in runs)
    named = sweep.expand({"grid": {"lr": [0.0003, 0.001]}, "name": "lr{lr:.0e}"})
    assert [p.name for p in named] == ["lr3e-04", "lr1e-03"], "format specs apply to numbers"
    off = sweep.expand({"grid": {"fsdp": [False]}})
    with pytest.raises(sweep.SweepError, match="grid key 'fsdp' is False but the run would have True; drop --fsdp after --"):
        sweep.make_runs(["--device", "xla", "--fsdp"], off, str(tmp_path / "off"))


def test_a_preempt_signal_that_scancel_also_sends_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(submitit.JobEnvironment, "USR_SIG", "TERM")  # what submitit reads from SUBMITIT_PREEMPT_SIGNAL=TERM when it is imported
    assert slurm.main(["--partition", "p", "--hours", "1", "--dry-run", "--", "--output_dir", str(tmp_path / "r")]) == 2
    assert "error: SUBMITIT_PREEMPT_SIGNAL=TERM: scancel and Ctrl-C send it too" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid:\n  lr: [0.001, -1]\n", "error: sweep point 'lr-1' (--lr -1): --lr"),
        ("grid:\n  lr: [0.001, 0.003]\nname: run\n", "both get the run name 'run'; give `name:` a placeholder for every grid key"),
        ("grid:\n  lrr: [0.001]\n", "grid key 'lrr': it is not a flag of main.py; did you mean 'lr'?"),
        ("grid:\n  output_dir: [a, b]\n", "grid key 'output_dir': the launcher sets it"),
        ("grid:\n  lr: 0.001\n", "grid key 'lr' in"),
        ("grids:\n  lr: [0.1]\n", "needs a `grid:` mapping"),
        ("grid:\n  lr: [0.1]\nname: 'x{wd}'\n", "name 'x{wd}' uses {wd}, which is not a grid key; the keys are lr"),
        ("grid:\n  lr: [0.1]\nname: 'x{lr'\n", "name 'x{lr' is not a format string"),
        ("grid:\n  model: [small_cnn, no_such_net]\n", "error: run 'modelno_such_net': "),
        ("grid:\n  model_ema: [1]\n", "grid key 'model_ema' has value 1; --model_ema is on/off: use true or false"),
        ("grid:\n  epochs: [[1, 2]]\n", "grid key 'epochs' has value [1, 2], a list, but --epochs takes one value"),
    ],
)
def test_a_bad_sweep_stops_before_submission_with_one_line_naming_the_point(tmp_path, capsys, text, message):
    root = tmp_path / "runs"
    grid = _write(tmp_path, "sweep.yaml", text)
    # --dry-run: the same checks as a submission, and a check that let a bad point through could never start a job here.
    rc = slurm.main(
        ["--partition", "p", "--gpus_per_node", "0", "--hours", "1", "--sweep", grid, "--dry-run", "--", "--device", "cpu", "--output_dir", str(root)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not root.exists(), "nothing was submitted or written"


@pytest.mark.parametrize(
    "launcher, flags, message",
    [
        (
            ["--nodes", "2", "--gpus_per_node", "4"],
            ["--batch_size", "36"],
            "run 'r': --batch_size 36 does not divide over 8 tasks; pick a multiple of 8, e.g. 40",
        ),
        (["--gpus_per_node", "4"], ["--resume", "auto"], "--resume: the launcher resumes every run with --resume auto"),
        (["--gpus_per_node", "2"], ["--device", "xla"], "is the TPU path; Slurm runs DDP on cuda/cpu"),
        (["--gpus_per_node", "2"], ["--parallel", "none"], "--parallel none with 2 tasks would train 2 separate copies"),
        (["--gpus_per_node", "2"], ["--epochs", "0"], "main.py flags: --epochs"),
        (["--gpus_per_node", "1", "--signal_delay_s", "3600"], [], "--signal_delay_s 3600 is not shorter than --hours 1"),
        (["--hours", "nan"], [], "--hours nan must be a positive number"),
        (["--mem_gb", "0"], [], "--mem_gb 0.0 must be a positive number"),
        (["--slurm", "time=5"], [], "--slurm time=...: the launcher sets it from its own flags (--hours)"),
        (["--slurm=--ntasks-per-node=3"], [], "--slurm ntasks-per-node=...: the launcher sets it from its own flags (--gpus_per_node/--tasks_per_node)"),
    ],
)
def test_launch_errors_are_one_line_before_anything_is_submitted(tmp_path, capsys, launcher, flags, message):
    root = tmp_path / "r"
    rc = slurm.main(["--partition", "p", "--hours", "1", "--dry-run", *launcher, "--", *flags, "--output_dir", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists()


def test_slurm_needs_a_partition(tmp_path, capsys):
    assert slurm.main(["--hours", "1", "--dry-run", "--", "--output_dir", str(tmp_path / "r")]) == 2
    assert "error: --partition is required with --cluster slurm" in capsys.readouterr().err


def test_ddp_environment_from_slurm_variables_with_a_fresh_port_per_attempt(monkeypatch, tmp_path):
    slurm_env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}
    slurm_env |= {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for k, v in slurm_env.items():
        monkeypatch.setenv(k, v)
    for k in slurm_job.DIST_KEYS:
        monkeypatch.delenv(k, raising=False)
    job_env = submitit.JobEnvironment()
    run_dpath = str(tmp_path / "run")
    first = slurm_job.get_dist_env(job_env, slurm_job.get_attempt_key(run_dpath))
    assert {k: v for k, v in first.items() if k != "MASTER_PORT"} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu07",
    }  # fmt: skip
    monkeypatch.setenv("SLURM_PROCID", "0")  # every task of an attempt computes the same port without talking
    assert slurm_job.get_dist_env(submitit.JobEnvironment(), slurm_job.get_attempt_key(run_dpath))["MASTER_PORT"] == first["MASTER_PORT"]
    ckpt.save_checkpoint({"step": 3}, run_dpath, 3)  # the attempt that requeued wrote a checkpoint: the next one rendezvous elsewhere
    after_stop = slurm_job.get_dist_env(job_env, slurm_job.get_attempt_key(run_dpath))["MASTER_PORT"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a node-failure restart without a new checkpoint
    after_restart = slurm_job.get_dist_env(job_env, slurm_job.get_attempt_key(run_dpath))["MASTER_PORT"]
    assert len({first["MASTER_PORT"], after_stop, after_restart}) == 3
    assert all(slurm_job.PORT_RANGE[0] <= int(p) < slurm_job.PORT_RANGE[1] for p in (first["MASTER_PORT"], after_stop, after_restart))
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="RANK already set in a 8-task job"):
        slurm_job.get_dist_env(job_env, "x")
    assert device.get_cuda_index(local_rank=3, n_visible=1) == 0, "one visible GPU per task (Slurm's GPU binding): cuda:0"
    assert device.get_cuda_index(local_rank=3, n_visible=4) == 3, "every GPU of the node visible: cuda:LOCAL_RANK"
    with pytest.raises(device.DeviceUnavailableError, match="LOCAL_RANK 4 but this process sees 2 GPU"):
        device.get_cuda_index(local_rank=4, n_visible=2)


def test_a_scheduler_signal_before_training_stops_after_the_first_step_and_repeats_are_ignored():
    before = {s: signal.getsignal(s) for s in (*preemption.SIGNALS, signal.SIGUSR2)}
    try:
        preemption.set_stop_signals((signal.SIGUSR2,))
        signal.raise_signal(signal.SIGUSR2)  # during start-up: kept for the loop
        assert preemption.get_pending_signal() == signal.SIGUSR2
        with preemption.StopSignals() as stop:
            assert stop.signum == signal.SIGUSR2 and preemption.get_pending_signal() is None
            signal.raise_signal(signal.SIGUSR2)  # a repeat while stopping: not "stop now"
            assert stop.signum == signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) == preemption._keep_pending, "after training it goes back to the launcher's handler"
    finally:
        preemption.set_stop_signals(())
        for s, handler in before.items():
            signal.signal(s, handler)


def _job_pids(child) -> list[int]:
    """The running submitit task processes the launcher (`child`) started through the local executor's controller."""
    return [p.pid for p in proc.list_live() if "submitit.core._submit" in p.cmdline and proc.has_env(p.pid, proc.TAG_ENV, child.tag)]


def _signal_task(child, log_fpath_glob: str, ready, sig: int, signalled: set[int], deadline: float) -> int:
    """Wait until the task's log satisfies `ready(text)`, then send `sig` to the task (a pid not signalled before), as Slurm does; returns the pid."""
    while time.monotonic() < deadline and child.poll() is None:
        logs = glob.glob(log_fpath_glob)
        pids = [p for p in _job_pids(child) if p not in signalled]
        if logs and pids and ready(open(logs[0]).read()):
            os.kill(pids[0], sig)
            signalled.add(pids[0])
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"the job never got ready for {signal.Signals(sig).name}; its log: {open(glob.glob(log_fpath_glob)[0]).read()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(420)  # about 60 s on this 2-core machine when idle, 130 s under a load of 6
def test_local_executor_requeues_on_usr2_resumes_and_stops_on_sigterm_without_requeue(digits_dir, tmp_path):
    """One real job through submitit's local executor: SIGUSR2 at step 2 (what Slurm sends before the time limit) -> checkpoint, requeue, the new
    attempt resumes; SIGTERM there (scancel) -> checkpoint, no requeue. Finishing from that checkpoint gives the uninterrupted run's weights exactly."""
    run_dpath = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.slurm", "--cluster", "local", "--gpus_per_node", "0", "--hours", "1", "--", *_train_flags(digits_dir)]
    cmd += ["--output_dir", str(run_dpath)]
    out_lines: list[str] = []
    with proc.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        reader = threading.Thread(target=lambda: out_lines.extend(child.stdout), daemon=True)
        reader.start()
        logs, signalled, deadline = str(run_dpath / "submitit" / "[0-9]*" / "*_0_log.out"), set(), time.monotonic() + 360
        _signal_task(child, logs, lambda text: "INFO train: step 2/16" in text, signal.SIGUSR2, signalled, deadline)
        resumed = "INFO train: resumed from"
        _signal_task(child, logs, lambda t: resumed in t and "INFO train: step" in t.split(resumed)[1], signal.SIGTERM, signalled, deadline)
        rc = child.wait(timeout=max(1.0, deadline - time.monotonic()))
        reader.join(timeout=10)
    out = "".join(out_lines)
    task_log = open(glob.glob(logs)[0]).read()
    assert rc == 1, out[-3000:]
    assert task_log.count("Starting with JobEnvironment") == 2 and task_log.count("Requeued job") == 1, task_log[-4000:]
    steps = sorted(s for s, _ in ckpt.list_checkpoints(str(run_dpath)))
    usr2_step, term_step = steps[0], steps[-1]
    assert 2 <= usr2_step < 8 and usr2_step < term_step < N_STEPS and steps[1:-1] == ([8] if term_step > 8 else []), (
        f"USR2 stop, (epoch 1,) SIGTERM stop: {steps}"
    )
    assert f"WARNING train: stopped by SIGUSR2 after step {usr2_step} (epoch 1, step {usr2_step} of 8)" in task_log
    assert f"INFO train: resumed from {ckpt.get_checkpoint_fpath(str(run_dpath), usr2_step)} at epoch 0, step {usr2_step}" in task_log
    assert f"ended run without a result: stopped: stopped by SIGTERM after step {term_step} (" in out, out[-3000:]
    record = json.loads((run_dpath / "launch.json").read_text())
    assert record["argv"][-4:] == ["--output_dir", str(run_dpath), "--resume", "auto"]
    # The stopped run continues with its own command line; the uninterrupted run trains the same flags into another directory.
    assert main.main(record["argv"])["steps"] == N_STEPS
    full_dpath = str(tmp_path / "full")
    assert main.main([*_train_flags(digits_dir), "--output_dir", full_dpath])["steps"] == N_STEPS
    got, want = (ckpt.load_file(ckpt.list_checkpoints(d)[0][1]) for d in (str(run_dpath), full_dpath))
    assert got["position"] == want["position"]
    for k, v in want["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=0, msg=k)
