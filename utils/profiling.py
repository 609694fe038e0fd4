"""`--profile_steps A:B`: a profiler trace of global steps A to B (both included), for tensorboard.

- CPU and CUDA: `torch.profiler` (CPU ops, and CUDA kernels on a GPU), a `ProfilerStep#N` range around each step N, written by
  `tensorboard_trace_handler` as `output_dir/tb/profile/<host>_<pid>.<ns>.pt.trace.json` (the PyTorch profiler format that
  tensorboard's torch-tb-profiler plugin, Perfetto and chrome://tracing open).
- XLA: torch_xla's profiler session (`torch_xla.debug.profiler.start_trace` / `stop_trace`: host and device activity), written as
  `output_dir/tb/plugins/profile/<run>/<host>.xplane.pb`, the layout tensorboard's profile plugin reads. Queued device work is
  waited for before the trace starts and before it stops (two host syncs, only around the profiled steps), so the trace holds
  exactly those steps.
Only the main process traces. A run resumed past step A traces nothing and says so.
"""

import logging
import os
import socket
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class StepProfiler:
    """`before_step(n)` ahead of global step n, `after_step(n)` once it ran; traces steps `first`..`last`."""

    def __init__(self, first: int, last: int, tb_dpath: str, kind: str, wait: Callable[[], None]):
        self.first, self.last, self.tb_dpath, self.kind, self.wait = first, last, tb_dpath, kind, wait
        self.prof = None
        self.step_range = None  # torch profiler: the open `ProfilerStep#N` range of the step that runs
        self.done = False

    def before_step(self, step: int) -> None:
        if self.done:
            return
        if self.prof is None and step > self.first:
            log.warning("--profile_steps %d:%d: the run starts at step %d, past the first step to profile; no trace is written", self.first, self.last, step)
            self.done = True
            return
        if step == self.first:
            self._start()
        if self.prof is not None and self.kind != "xla":
            self.step_range = torch.profiler.record_function(f"ProfilerStep#{step}")
            self.step_range.__enter__()

    def after_step(self, step: int) -> None:
        if self.prof is None:
            return
        if self.step_range is not None:
            self.step_range.__exit__(None, None, None)
            self.step_range = None
        if step >= self.last:
            self._stop()

    def _start(self) -> None:
        self.wait()
        if self.kind == "xla":
            import torch_xla.debug.profiler as xp

            xp.start_trace(self.tb_dpath)
            self.prof = xp
        else:
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if self.kind == "cuda" else [])
            worker = f"{socket.gethostname()}_{os.getpid()}"
            handler = torch.profiler.tensorboard_trace_handler(os.path.join(self.tb_dpath, "profile"), worker_name=worker)
            self.prof = torch.profiler.profile(activities=activities, on_trace_ready=handler)
            self.prof.start()
        log.info("profiling steps %d to %d", self.first, self.last)

    def _stop(self) -> None:
        self.wait()
        if self.kind == "xla":
            self.prof.stop_trace()
        else:
            self.prof.stop()
        self.prof, self.done = None, True
        log.info("profile of steps %d to %d written under %s (tensorboard --logdir %s)", self.first, self.last, self.tb_dpath, self.tb_dpath)

    def close(self) -> None:
        """The run ended inside the profiled range (a stop signal, the last epoch): write what was traced."""
        if self.prof is not None:
            self._stop()
