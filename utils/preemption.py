"""Stop cleanly on SIGTERM (preemption, `kill`, a scheduler's timeout) and SIGINT (Ctrl-C).

`StopSignals` is a context manager that `Trainer.fit` holds: it replaces the SIGTERM and SIGINT handlers with one that only records the signal, and puts the previous handlers back on exit. The loop finishes the step it is in, agrees with the other processes on a stop step, writes a checkpoint, and raises `TrainingStopped`; the CLI turns that into one line and exit code 128 + signal number (143 for SIGTERM, 130 for SIGINT), like a shell does for a process killed by that signal.

A second signal while the first is being handled restores the previous handlers and delivers itself again: Ctrl-C twice is a KeyboardInterrupt right away, a second SIGTERM the default termination (no checkpoint).

Handlers can only be installed from the main thread (a Python rule); from another thread `StopSignals` does nothing and training cannot be stopped by a signal (logged once). A signal that is ignored when training starts (SIG_IGN) stays ignored.
"""

import logging
import signal
import threading

log = logging.getLogger("train")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            log.warning("training runs outside the main thread: SIGTERM/SIGINT cannot be caught, so a signal ends the run without a checkpoint")
            return self
        for signum in SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # e.g. SIGINT of a job started with `&` by a non-interactive shell: keep ignoring it
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
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
        self._restore()
        signal.raise_signal(signum)
