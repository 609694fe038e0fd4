"""The job that `python -m train.slurm` submits: one `main.py` run per Slurm task, requeued by submitit when the time limit or a preemption nears.

Only the command line is pickled (`TrainJob.argv`, which already holds `--output_dir RUN_DIR --resume auto`), so every attempt, a requeue, a node-failure
restart or a manual resubmit, resumes from the newest checkpoint in the run's own directory; nothing in the pickle can go stale (a resume path that points
at an old checkpoint). `checkpoint()` is what submitit calls before it requeues: it returns a fresh job with the same command line.

Signals, as submitit and Slurm send them (`--signal=USR2@signal_delay_s`, and SIGTERM at the end or on `scancel`):
- SIGUSR2 (time limit or preemption ahead): the loop finishes its step, every process agrees on the stop step, the checkpoint is written, `main.cli` returns
  140, and only then does global rank 0 hand over to submitit's own USR2 handler, which calls `checkpoint()`, rewrites the pickle and requeues
  (`scontrol requeue`; the local executor restarts the tasks). Left to itself, submitit's handler would exit in the middle of a step with no checkpoint of it.
- SIGTERM (a user's `scancel`, or the limit reached): checkpoint and exit 143 without requeue. Before training starts it ends the task at once, as in
  `python main.py` (nothing to save yet); submitit itself would only log it.

Multi-node DDP comes from the Slurm environment through submitit's `JobEnvironment`: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR (the first
node; 127.0.0.1 on one node) and a MASTER_PORT that changes with every attempt (`get_master_port`), so a requeued job never meets a rendezvous that a dying
attempt still holds (submitit#1613). Which GPU a task uses is `utils.device.get_cuda_index` (one visible GPU per task, or LOCAL_RANK among all of them).
"""

import logging
import os
import signal
import zlib

from utils import process

os.environ.update(process.env_defaults())  # before torch is imported (utils/process.py); this module is the first the job's unpickling imports

import submitit

import main
from utils import checkpoint as ckpt
from utils import preemption
from utils.logging import setup_logging

log = logging.getLogger("train")


def get_requeue_signal() -> signal.Signals:
    """The signal submitit puts in `#SBATCH --signal` and handles (USR2 unless SUBMITIT_PREEMPT_SIGNAL names another); never TERM or INT, which stop."""
    name = submitit.JobEnvironment.USR_SIG  # read by submitit from SUBMITIT_PREEMPT_SIGNAL when it is imported
    signum = getattr(signal, f"SIG{name}", None)
    if signum is None or signum in preemption.SIGNALS:
        raise ValueError(
            f"SUBMITIT_PREEMPT_SIGNAL={name}: "
            + ("not a signal name" if signum is None else "scancel and Ctrl-C send it too, so a time limit could not be told from a cancel")
            + "; unset it (USR2) or name another user signal"
        )
    return signal.Signals(signum)


PORT_RANGE = (20000, 60000)
DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def get_option(argv: list[str], flag: str) -> str | None:
    """The value of the last `--flag VALUE` or `--flag=VALUE` in `argv` (None: absent)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def get_attempt_key(run_dpath: str) -> str:
    """What tells this attempt from the previous ones, the same on every task without talking: Slurm's restart count and the newest checkpoint's step.

    SLURM_RESTART_COUNT grows on every requeue and node-failure restart; the newest step grows on every requeue that stopped cleanly (it wrote a checkpoint),
    which also covers the local executor, where there is no restart count. No task of this attempt writes a checkpoint before the rendezvous.
    """
    try:
        found = ckpt.list_checkpoints(run_dpath)
    except (FileNotFoundError, OSError):
        found = []
    return f"restart{os.environ.get('SLURM_RESTART_COUNT', '0')}.step{found[0][0] if found else -1}"


def get_master_port(job_id: str, attempt_key: str) -> int:
    """A port in PORT_RANGE from the job id and the attempt: the same on every task of an attempt, another one on the next attempt."""
    lo, hi = PORT_RANGE
    return lo + zlib.crc32(f"{job_id}/{attempt_key}".encode()) % (hi - lo)


def get_dist_env(job_env: submitit.JobEnvironment, attempt_key: str) -> dict[str, str]:
    """The torch.distributed variables (env:// rendezvous) of this task; empty for a one-task job, which trains without DDP."""
    if job_env.num_tasks == 1:
        return {}
    taken = [k for k in DIST_KEYS if k in os.environ]
    if taken:
        raise RuntimeError(
            f"{', '.join(taken)} already set in a {job_env.num_tasks}-task job (torchrun or another launcher inside it?): the Slurm launcher sets them "
            "from the job; unset them, or launch with --gpus_per_node 1 --nodes 1"
        )
    return {
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(job_env.num_tasks // job_env.num_nodes),
        "MASTER_ADDR": "127.0.0.1" if job_env.num_nodes == 1 else job_env.hostnames[0],
        "MASTER_PORT": str(get_master_port(job_env.job_id, attempt_key)),
    }


class TrainJob(submitit.helpers.Checkpointable):
    """`main.py ARGV` as a submitit job; `argv` (with `--output_dir RUN_DIR --resume auto`) is its whole state."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit before a requeue, once the run's checkpoint is written: the same command line, nothing else."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv))

    def __call__(self) -> dict:
        job_env = submitit.JobEnvironment()
        requeue_signal = get_requeue_signal()
        requeue = signal.getsignal(requeue_signal)  # submitit's handler: checkpoint() -> requeue -> exit; only global rank 0 acts
        run_dpath = get_option(self.argv, "--output_dir")
        assert run_dpath and get_option(self.argv, "--resume") == "auto", f"a TrainJob needs --output_dir and --resume auto: {self.argv}"
        attempt = get_attempt_key(run_dpath)
        dist_env = get_dist_env(job_env, attempt)
        os.environ.update(dist_env)
        process.setup_process()
        preemption.set_exit_at_once(True)  # as `python main.py`: a second signal while stopping, or one after training, exits at once
        preemption.set_stop_signals((requeue_signal,))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # before training: end at once, as `python main.py` does (submitit would only log it)
        setup_logging(job_env.global_rank == 0)
        logging.getLogger("submitit").propagate = False  # it has its own handlers: without this every submitit line shows twice
        master = f", rendezvous {dist_env['MASTER_ADDR']}:{dist_env['MASTER_PORT']}" if dist_env else ""
        log.info("slurm: %s, attempt %s%s", job_env, attempt, master)
        code = main.cli(self.argv)
        if code == 0:
            return {"exit_code": 0, "output_dir": run_dpath}
        if code == preemption.get_exit_code(requeue_signal) and callable(requeue):
            log.warning("slurm: checkpoint written after %s; submitit requeues the job (from global rank 0)", requeue_signal.name)
            try:
                requeue(requeue_signal, None)  # rank 0 exits in here (SystemExit); others return. UncompletedJobError (too many timeouts) propagates
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        # No result pickle for a stop or a failure: the task's exit code is main.py's (143 scancel, 140 requeued, 2 bad input, ...), the reason is in its log.
        preemption.exit_process(code)
