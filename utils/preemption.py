"""Stop cleanly on SIGTERM (preemption, `kill`, a scheduler's timeout) and SIGINT (Ctrl-C).

`StopSignals` is a context manager that `Trainer.fit` holds: it replaces the SIGTERM and SIGINT handlers with one that only records the signal, and puts the
previous handlers back on exit. The loop finishes the step it is in, agrees with the other processes on a stop step, writes a checkpoint, and raises
`TrainingStopped`; the CLI turns that into one line and exit code 128 + signal number (143 for SIGTERM, 130 for SIGINT), like a shell does for a process killed
by that signal.

A second signal while the first is being handled stops at once, without a checkpoint. In the program (`python main.py`, which calls `set_exit_at_once(True)`)
that is `os._exit(128 + signum)` after one `stopped:` line: a KeyboardInterrupt could land inside TensorFlow's clean-up or a `__del__`, where Python only prints
`Exception ignored` and goes on. The program also keeps exit-at-once handlers after training (checkpointing, shut-down): nothing is left to save then. Used as a
library (tests, notebooks), the previous handlers are restored and the second signal delivered to them instead (Ctrl-C: a KeyboardInterrupt).

Handlers can only be installed from the main thread (a Python rule); from another thread `StopSignals` does nothing and training cannot be stopped by a signal
(logged once). A signal that is ignored when training starts (SIG_IGN) stays ignored.

Schedulers: a launcher adds the signal its scheduler sends before a time limit or a preemption (submitit's SIGUSR2, `train/slurm_job.py`) with
`set_stop_signals`. The loop stops on it exactly as on SIGTERM (exit code 128 + 12 = 140 for SIGUSR2), and one that arrives before the loop starts (during
start-up) is kept and stops the loop after its first step, so a job signalled while it loads its data still leaves a checkpoint to requeue from. Repeats of
such a signal are ignored (only SIGTERM and SIGINT mean "now"); after training they go back to the launcher's handler, which records them.
"""

import logging
import os
import shlex
import signal
import sys
import threading

log = logging.getLogger("train")

SIGNALS = (signal.SIGTERM, signal.SIGINT)  # always stop signals; a second one while stopping exits at once
_EXIT_AT_ONCE = False  # set by the program (main.py's __main__), never by a library user
_EXTRA_SIGNALS: tuple[int, ...] = ()  # a scheduler's stop signals (set_stop_signals), recorded by StopSignals like SIGNALS
_pending: int | None = None  # the first extra signal received outside StopSignals (before the loop starts), handed to the next StopSignals


def set_stop_signals(extra: tuple[int, ...]) -> None:
    """Launcher mode: `StopSignals` also stops on `extra` (e.g. submitit's SIGUSR2); from now on (main thread) one received outside the loop is kept."""
    global _EXTRA_SIGNALS, _pending
    assert not set(extra) & set(SIGNALS), f"{extra} repeats SIGTERM/SIGINT, which always stop"
    _EXTRA_SIGNALS, _pending = tuple(extra), None
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in extra:
        signal.signal(signum, _keep_pending)


def _keep_pending(signum: int, frame) -> None:
    """Handler for a scheduler's stop signal outside the training loop: keep the first one for the loop (see the module docstring)."""
    global _pending
    if _pending is None:
        _pending = signum


def get_pending_signal() -> int | None:
    """The scheduler's stop signal received outside the loop and not yet taken by a `StopSignals` (None: none)."""
    return _pending


def get_stop_signals() -> tuple[int, ...]:
    return SIGNALS + _EXTRA_SIGNALS


def set_exit_at_once(enabled: bool) -> None:
    """Program mode: a second signal, or any signal after training, exits the process at once (see the module docstring)."""
    global _EXIT_AT_ONCE
    _EXIT_AT_ONCE = enabled


def exit_now(signum: int, frame=None) -> None:
    """Signal handler: one `stopped:` line, then `os._exit(128 + signum)` (no Python clean-up, which TensorFlow can stall)."""
    try:
        sys.stderr.write(f"stopped: {signal.Signals(signum).name} while stopping or shutting down; exiting at once without a checkpoint\n")
        sys.stderr.flush()
    finally:
        os._exit(get_exit_code(signum))


def exit_process(code: int) -> None:
    """End `python main.py` with `code` once its work is written and closed: flush, then `os._exit`.

    No interpreter finalization: TensorFlow's clean-up can stall it, and once Python's signal module is finalized a signal gets the
    default action (a SIGINT in that window killed the process with -2 instead of exiting 130). Every output the run writes (checkpoints,
    args.yaml, metrics.jsonl, tensorboard events) is closed before this point; runtimes are closed in `main.py`.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def setup_exit_now_handlers() -> None:
    """SIGTERM and SIGINT exit at once from now on (main thread only; signals ignored at start stay ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, exit_now)


def get_exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal."""
    return 128 + signum


class TrainingStopped(Exception):
    """A stop signal arrived: training stopped after a whole step and `fpath` holds the checkpoint of that step."""

    def __init__(self, message: str, signum: int, step: int, fpath: str | None, output_dpath: str):
        super().__init__(message)
        self.signum, self.step, self.fpath, self.output_dpath = signum, step, fpath, output_dpath

    @property
    def exit_code(self) -> int:
        return get_exit_code(self.signum)


class StopSignals:
    """Record SIGTERM/SIGINT instead of dying, while inside `with`; `signum` is the first one received (None: none)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopSignals":
        global _pending
        self.signum, _pending = _pending, None  # a scheduler's signal during start-up stops the loop after its first step
        if self.signum is not None:
            log.warning("%s arrived before training started: stopping after the first step", signal.Signals(self.signum).name)
        if threading.current_thread() is not threading.main_thread():
            log.warning("training runs outside the main thread: SIGTERM/SIGINT cannot be caught, so a signal ends the run without a checkpoint")
            return self
        for signum in get_stop_signals():
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # e.g. SIGINT of a job started with `&` by a non-interactive shell: keep ignoring it
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if _EXIT_AT_ONCE:
            # Training is over: checkpointing and shut-down have nothing a second Ctrl-C should wait for. Our handlers are replaced in
            # place: restoring the previous ones first would leave a window where a second signal (sent while the stop is under way)
            # raises KeyboardInterrupt at a random point and kills the process by SIGINT (-2) instead of exiting 130. A scheduler's signals go back to
            # the launcher's handler.
            for signum in _EXTRA_SIGNALS:
                if signum in self._previous:
                    signal.signal(signum, self._previous[signum])
            self._previous.clear()
            setup_exit_now_handlers()
            return
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        # Runs in the main thread between two bytecodes: only record it; the loop logs and acts at the end of the step.
        if self.signum is None:
            self.signum = signum
            return
        if signum not in SIGNALS:
            return  # a scheduler's signal again (a stop is under way): only SIGTERM and SIGINT mean "now"
        if _EXIT_AT_ONCE:
            exit_now(signum)
        self._restore()
        signal.raise_signal(signum)


def get_resume_command(argv: list[str], output_dpath: str) -> str:
    """The command that continues a stopped run: the same flags, with `--resume auto` and the same `--output_dir`."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        if arg in ("--resume", "--output_dir"):
            skip_value = True
            continue
        if not arg.startswith(("--resume=", "--output_dir=")):
            kept.append(arg)
    return shlex.join(["python", "main.py", *kept, "--resume", "auto", "--output_dir", output_dpath])
