"""Launch main.py on a Slurm cluster through submitit: one task per GPU, DDP over every node, requeued on preemption and before the time limit.

    python -m train.slurm --partition P --account A --nodes 2 --gpus_per_node 8 --hours 24 -- --config train/recipes/vit_s16_i1k.yaml
    python -m train.slurm --partition P --nodes 1 --gpus_per_node 4 --hours 2 --sweep sweep.yaml --dry-run -- --epochs 90 --output_dir /shared/runs/sweep

Everything after `--` is main.py's command line. Its `--output_dir` (after `--config`; main.py's default otherwise) is the run's directory, or with
`--sweep` the parent of one directory per point (`train/sweep.py`); every run gets `--resume auto`, so a requeued, restarted or resubmitted job continues
from the newest checkpoint there. Every run's command line is parsed by main.py's own parser before anything is submitted. A sweep is one job array.
submitit's pickles and logs go to `<output_dir>/submitit/<job id>/`, and each run directory gets `launch.json` (command line, Slurm parameters, job id,
git commit). The output directory must be on storage that every node sees.

Requeue: Slurm sends SIGUSR2 `--signal_delay_s` seconds before the time limit (and on preemption where the cluster sets preempt_send_user_signal); the
run finishes its step, writes a checkpoint, and submitit requeues it (`train/slurm_job.py`), up to `--max_num_timeout` times for time limits. The delay has
to cover `--log_every` steps (where the processes agree to stop) plus writing a checkpoint. `scancel` (SIGTERM) checkpoints and ends the job without
requeue. `--cluster local` runs the same jobs on this machine with submitit's local executor (one node; it waits for them, one run after another).
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time

import submitit
from submitit.slurm import slurm as submitit_slurm

from train import slurm_job, sweep
from utils import fs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE = (
    "python -m train.slurm --partition P [--account A] --nodes N --gpus_per_node G --hours H [--sweep sweep.yaml] [--cluster slurm|local] [--dry-run] "
    "-- MAIN_PY_FLAGS ..."
)


# sbatch options the launcher writes itself -> the flags that set them (`--slurm KEY=VALUE` may not override them)
LAUNCHER_SBATCH_KEYS = {
    "partition": "--partition", "account": "--account", "nodes": "--nodes", "ntasks_per_node": "--gpus_per_node/--tasks_per_node",
    "gpus_per_node": "--gpus_per_node", "time": "--hours", "cpus_per_task": "--cpus_per_task", "mem": "--mem_gb", "constraint": "--constraint",
    "qos": "--qos", "signal": "--signal_delay_s", "job_name": "--job_name", "array": "--sweep, --array_parallelism", "output": "--output_dir",
    "error": "--output_dir", "open_mode": "submitit (append: a requeued job's log continues)",
}  # fmt: skip


class LaunchError(ValueError):
    """A launch that must not be submitted: the message names the value and the fix."""


def parse_key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.lstrip("-")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without the dashes), got {item!r}")
    return key, value


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.slurm", usage=USAGE, description=__doc__.split("\n\n")[0])
    p.add_argument("--partition", default=None, help="Slurm partition (required with --cluster slurm)")
    p.add_argument("--account", default=None, help="Slurm account to charge")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus_per_node", type=int, default=1, help="GPUs per node, one task (process) each; 0: CPU tasks (--tasks_per_node)")
    p.add_argument("--tasks_per_node", type=int, default=None, help="processes per node (default: --gpus_per_node, or 1 without GPUs)")
    p.add_argument("--hours", type=float, required=True, help="time limit of each allocation; the job is requeued when it nears it")
    p.add_argument("--cpus_per_task", type=int, default=8, help="CPUs per task (the input pipeline runs on them)")
    p.add_argument("--mem_gb", type=float, default=None, help="memory per node (default: the cluster's)")
    p.add_argument("--constraint", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--slurm", type=parse_key_value, action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option (repeatable)")
    p.add_argument("--setup", action="append", default=[], metavar="CMD", help="shell line run before the tasks start, e.g. 'module load cuda' (repeatable)")
    p.add_argument("--signal_delay_s", type=int, default=120, help="seconds between SIGUSR2 and the time limit: covers --log_every steps and a checkpoint")
    p.add_argument("--max_num_timeout", type=int, default=30, help="requeues after a time limit (preemptions always requeue)")
    p.add_argument("--array_parallelism", type=int, default=256, help="sweep points running at once")
    p.add_argument("--job_name", default=None, help="Slurm job name (default: the output directory's name)")
    p.add_argument("--sweep", default=None, metavar="SWEEP_YAML", help="a grid over main.py flags: one job array, one run per point (train/sweep.py)")
    p.add_argument("--cluster", default="slurm", choices=("slurm", "local"), help="local: submitit's local executor on this machine (one node)")
    p.add_argument("--dry-run", action="store_true", help="print every run's command line and the sbatch script, submit nothing")
    return p


@dataclasses.dataclass(frozen=True)
class Launch:
    """The checked launch: the runs, where submitit writes, and the executor's parameters."""

    runs: list[sweep.Run]
    root_dpath: str
    submitit_dpath: str
    params: dict
    cluster: str
    max_num_timeout: int


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher flags, main.py flags) around the first `--`."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def check_launcher_args(a: argparse.Namespace) -> None:
    for flag in ("nodes", "hours", "cpus_per_task", "signal_delay_s", "array_parallelism", "mem_gb"):
        value = getattr(a, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise LaunchError(f"--{flag} {value} must be a positive number")
    owned = [k for k, _ in a.slurm if k.lstrip("-").replace("-", "_") in LAUNCHER_SBATCH_KEYS]
    if owned:
        raise LaunchError(f"--slurm {owned[0]}=...: the launcher sets it from its own flags ({LAUNCHER_SBATCH_KEYS[owned[0].lstrip('-').replace('-', '_')]})")
    for flag in ("gpus_per_node", "max_num_timeout"):
        if getattr(a, flag) < 0:
            raise LaunchError(f"--{flag} {getattr(a, flag)} must be 0 or more")
    if a.tasks_per_node is not None and a.tasks_per_node <= 0:
        raise LaunchError(f"--tasks_per_node {a.tasks_per_node} must be positive")
    if a.tasks_per_node is not None and a.gpus_per_node and a.tasks_per_node != a.gpus_per_node:
        raise LaunchError(f"--tasks_per_node {a.tasks_per_node} with --gpus_per_node {a.gpus_per_node}: one task per GPU; drop --tasks_per_node")
    if a.cluster == "slurm" and not a.partition:
        raise LaunchError("--partition is required with --cluster slurm (sinfo lists them); --cluster local runs on this machine")
    if a.cluster == "local" and a.nodes != 1:
        raise LaunchError(f"--nodes {a.nodes} with --cluster local: the local executor runs one node; use --nodes 1")
    if a.signal_delay_s >= a.hours * 3600:
        raise LaunchError(f"--signal_delay_s {a.signal_delay_s} is not shorter than --hours {a.hours} ({a.hours * 3600:g} s); lower it or raise --hours")


def check_run(run: sweep.Run, world: int, gpus_per_node: int) -> None:
    """What main.py would only find on the cluster: a device or parallelism the launcher cannot give, a batch that does not divide over the tasks."""
    s = run.settings
    where = f"run {run.name!r}"
    if s.runtime.device == "xla" or s.runtime.parallel in ("spmd", "fsdp", "pjrt"):
        raise LaunchError(
            f"{where}: --device {s.runtime.device} --parallel {s.runtime.parallel} is the TPU path; Slurm runs DDP on cuda/cpu (TPU pods: train/xla_dist.py)"
        )
    if s.runtime.device == "cpu" and gpus_per_node:
        raise LaunchError(f"{where}: --device cpu with --gpus_per_node {gpus_per_node} leaves the GPUs idle; use --device auto, or --gpus_per_node 0")
    if s.runtime.device == "cuda" and not gpus_per_node:
        raise LaunchError(f"{where}: --device cuda with --gpus_per_node 0; ask for GPUs with --gpus_per_node G")
    if world > 1 and s.runtime.parallel == "none":
        raise LaunchError(f"{where}: --parallel none with {world} tasks would train {world} separate copies; use --parallel auto (DDP)")
    if world == 1 and s.runtime.parallel == "ddp":
        raise LaunchError(f"{where}: --parallel ddp with one task; ask for more GPUs or nodes, or use --parallel auto")
    for flag, value in (("--batch_size", s.data.batch_size), ("--eval_batch_size", s.data.eval_batch_size)):
        if value % world:
            raise LaunchError(f"{where}: {flag} {value} does not divide over {world} tasks; pick a multiple of {world}, e.g. {(value // world + 1) * world}")
    try:
        s.model.check_flags(s.data.kind, s.data.data_set)  # main.py's own start-up check: the model exists and takes the model flags (meta device)
    except ValueError as e:
        raise LaunchError(f"{where}: {e}") from None


def get_root_dpath(main_argv: list[str]) -> str:
    """main.py's resolved --output_dir (flag, --config recipe, or default), absolute: every node must find it again."""
    try:
        s = sweep.parse_point(main_argv)
    except ValueError as e:
        raise LaunchError(f"main.py flags: {e}") from None
    out = s.train.output_dir
    if not out:
        raise LaunchError("--output_dir is empty: a Slurm run needs a directory to checkpoint into and resume from")
    if "://" in out:
        raise LaunchError(f"--output_dir {out!r}: submitit keeps its pickles and logs beside the runs, on a filesystem every node mounts; use a shared path")
    return os.path.abspath(out)


def get_params(a: argparse.Namespace, name: str) -> dict:
    """submitit executor parameters (sbatch option names) of one job or one array task."""
    tasks = a.tasks_per_node or a.gpus_per_node or 1
    setup = [f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}", *a.setup]  # the job unpickles train.slurm_job from this checkout
    if a.cluster == "local":
        return {"timeout_min": a.hours * 60, "tasks_per_node": tasks, "gpus_per_node": a.gpus_per_node, "signal_delay_s": a.signal_delay_s, "setup": setup}
    params = {"job_name": a.job_name or name, "partition": a.partition, "account": a.account, "time": max(1, round(a.hours * 60)), "nodes": a.nodes}
    params |= {"ntasks_per_node": tasks, "gpus_per_node": a.gpus_per_node or None, "cpus_per_task": a.cpus_per_task, "constraint": a.constraint}
    params |= {"qos": a.qos, "signal_delay_s": a.signal_delay_s, "array_parallelism": a.array_parallelism, "setup": setup, "mem_gb": a.mem_gb}
    params["additional_parameters"] = dict(a.slurm) or None
    return {k: v for k, v in params.items() if v is not None}


def make_launch(argv: list[str]) -> tuple[argparse.Namespace, Launch]:
    """Parse and check everything; nothing is written or submitted."""
    own, main_argv = split_argv(argv)
    a = make_parser().parse_args(own)
    check_launcher_args(a)
    slurm_job.get_requeue_signal()  # SUBMITIT_PREEMPT_SIGNAL, if set, must name a signal the job can stop on
    root = get_root_dpath(main_argv)
    points = sweep.expand(sweep.load_sweep(a.sweep)) if a.sweep else None
    runs = sweep.make_runs(main_argv, points, root)
    world = a.nodes * (a.tasks_per_node or a.gpus_per_node or 1)
    for run in runs:
        check_run(run, world, a.gpus_per_node)
    params = get_params(a, os.path.basename(root.rstrip("/")) or "train")
    return a, Launch(runs, root, fs.join(root, "submitit", "%j"), params, a.cluster, a.max_num_timeout)


def get_sbatch_script(launch: Launch) -> str:
    """The sbatch script submitit writes for this launch (an array of one task per run when there are several)."""
    params = dict(launch.params)
    if "mem_gb" in params:
        params["mem"] = submitit_slurm._convert_mem(params.pop("mem_gb"))
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(launch.submitit_dpath)])
    n = len(launch.runs)
    return submitit_slurm._make_sbatch_string(command=command, folder=launch.submitit_dpath, map_count=n if n > 1 else None, **params)


def print_plan(launch: Launch, script: str | None) -> None:
    for run in launch.runs:
        found = fs.exists(run.run_dpath) and [f for f in fs.listdir(run.run_dpath) if f.startswith("checkpoint-") and f.endswith(".pt")]
        print(f"run {run.name}: {run.run_dpath}" + (" (resumes from its newest checkpoint)" if found else ""))
        print(f"  python main.py {shlex.join(run.argv)}")
    if script is not None:
        print(f"sbatch script ({len(launch.runs)} {'array tasks' if len(launch.runs) > 1 else 'job'}), pickles and logs in {launch.submitit_dpath}:")
        print(script)


def get_git_commit() -> str | None:
    """The checkout's commit (and '-dirty' with local changes): the job imports this checkout when it starts, not a copy."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def make_executor(launch: Launch) -> submitit.Executor:
    if launch.cluster == "local":
        executor = submitit.LocalExecutor(folder=launch.submitit_dpath, max_num_timeout=launch.max_num_timeout)
    else:
        executor = submitit.SlurmExecutor(folder=launch.submitit_dpath, max_num_timeout=launch.max_num_timeout)
    executor.update_parameters(**launch.params)
    return executor


def write_launch_record(launch: Launch, run: sweep.Run, job: submitit.Job, commit: str | None) -> None:
    record = {"name": run.name, "job_id": job.job_id, "cluster": launch.cluster, "argv": list(run.argv), "params": launch.params, "git": commit}
    record |= {"log": str(job.paths.stdout), "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
    fs.makedirs(run.run_dpath)
    fs.write_text_atomic(fs.join(run.run_dpath, "launch.json"), json.dumps(record, indent=1) + "\n", what="--output_dir")


def submit(launch: Launch) -> list[submitit.Job]:
    """Submit every run (one job array under Slurm; one after another, waited for, with --cluster local)."""
    executor, commit = make_executor(launch), get_git_commit()
    jobs = []
    if launch.cluster == "local":
        for run in launch.runs:
            job = executor.submit(slurm_job.TrainJob(list(run.argv)))
            jobs.append(job)
            write_launch_record(launch, run, job, commit)
            print(f"submitted {run.name}: local job {job.job_id}, log {job.paths.stdout}", flush=True)
            wait_local(job, run)
        return jobs
    with executor.batch():
        for run in launch.runs:
            jobs.append(executor.submit(slurm_job.TrainJob(list(run.argv))))
    for run, job in zip(launch.runs, jobs, strict=True):
        write_launch_record(launch, run, job, commit)
        print(f"submitted {run.name}: job {job.job_id}, log {job.paths.stdout}")
    return jobs


def wait_local(job: submitit.Job, run: sweep.Run) -> None:
    """Wait for a local job (requeues included) and print how it ended: its result, or the last `stopped:`/`error:` line of its log."""
    while not job.done():
        time.sleep(0.5)
    if job.paths.result_pickle.exists():
        try:
            print(f"finished {run.name}: {job.results()[0]}", flush=True)  # one result per task: rank 0's
            return
        except Exception as e:  # submitit's FailedJobError holds the job's traceback: its last line is the exception
            lines = str(e).splitlines()
            print(f"failed {run.name}: {next((x for x in reversed(lines) if 'Error' in x.split(':')[0]), lines[0])} (log {job.paths.stderr})", flush=True)
            return
    lines = job.paths.stderr.read_text(errors="replace").splitlines() if job.paths.stderr.exists() else []
    last = [line for line in lines if line.startswith(("stopped:", "error:"))]
    print(f"ended {run.name} without a result: {last[-1] if last else 'see ' + str(job.paths.stderr)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        a, launch = make_launch(argv)
    except ValueError as e:  # LaunchError, SweepError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        print_plan(launch, get_sbatch_script(launch) if launch.cluster == "slurm" else None)
        return 0
    print_plan(launch, None)
    jobs = submit(launch)
    if launch.cluster == "local":
        return 0 if all(j.paths.result_pickle.exists() and j.exception() is None for j in jobs) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
