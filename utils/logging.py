"""Console progress (plain lines, fine when redirected), tensorboard scalars, and a metrics.jsonl.

Values reach the host only inside step closures (see `utils.device.Runtime.add_step_closure`), so
the training step itself never syncs. Only the main process writes. The output dir may be remote
(`gs://...`): tensorboard writes there itself, metrics.jsonl goes through `utils.fs` and, because a
flush re-uploads the whole object, is flushed at most every `REMOTE_FLUSH_S` seconds there.
"""

import json
import logging
import math
import os
import sys
import time

from utils import fs

log = logging.getLogger("train")

REMOTE_FLUSH_S = 60.0


def setup_logging(is_main: bool = True, level: int = logging.INFO) -> None:
    """One plain format for every module; non-main processes only log warnings and errors."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    handler._ours = True
    root = logging.getLogger()
    # Replace our own handler on a second call (e.g. a worker re-running setup); keep everyone else's (pytest's capture, a user's file handler).
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_ours", False)] + [handler]
    root.setLevel(level if is_main else logging.WARNING)
    for noisy in ("absl", "tensorflow", "h5py", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class MetricLogger:
    """Writes scalars to the console, tensorboard (`output_dir/tb`) and `output_dir/metrics.jsonl`."""

    def __init__(self, output_dpath: str | None, is_main: bool, total_steps: int, tensorboard: bool = True):
        self.is_main = is_main
        self.total_steps = total_steps
        self.writer = None
        self.jsonl = None
        self.t_last, self.step_last = time.perf_counter(), None
        self.t_first, self.step_first = None, None  # the first progress line: the ETA averages from here (past compiles and warm-up)
        self.flush_every_s = 0.0
        self.t_flushed = self.t_last
        if not (is_main and output_dpath):
            return
        fs.makedirs(output_dpath)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dpath, "tb"))
        self.jsonl_fpath = fs.join(output_dpath, "metrics.jsonl")
        self.jsonl = fs.open_file(self.jsonl_fpath, "a")
        self.flush_every_s = REMOTE_FLUSH_S if fs.is_remote(output_dpath) else 0.0

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if not self.is_main:
            return
        for k, v in values.items():
            if self.writer is not None:
                self.writer.add_scalar(f"{prefix}{k}", v, step)
        if self.jsonl is not None:
            try:
                self.jsonl.write(json.dumps({"step": step, **{f"{prefix}{k}": v for k, v in values.items()}}) + "\n")
                if time.perf_counter() - self.t_flushed >= self.flush_every_s:
                    self.jsonl.flush()
                    self.t_flushed = time.perf_counter()
            except OSError as e:
                self._write_failed(e)

    def train_progress(self, step: int, epoch: int, n_epochs: int, values: dict[str, float], examples_per_step: int) -> None:
        """One console line with rate and ETA, plus the same scalars to tensorboard/jsonl."""
        now = time.perf_counter()
        steps_done = step - self.step_last if self.step_last is not None else None
        rate = steps_done / (now - self.t_last) if steps_done and now > self.t_last else float("nan")
        self.t_last, self.step_last = now, step
        if self.t_first is None:
            self.t_first, self.step_first = now, step
        avg_rate = (step - self.step_first) / (now - self.t_first) if step > self.step_first and now > self.t_first else rate
        values = dict(values)
        if not math.isnan(rate):
            values["steps_per_s"] = rate
            values["examples_per_s"] = rate * examples_per_step
        self.scalars(step, values, prefix="train/")
        if not self.is_main:
            return
        eta = (self.total_steps - step) / avg_rate if avg_rate == avg_rate and avg_rate > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}", f"epoch {epoch + 1}/{n_epochs}"]
        parts += [f"{k} {v:.4g}" for k, v in values.items() if k not in ("steps_per_s", "examples_per_s")]
        if not math.isnan(rate):
            parts += [f"{rate * examples_per_step:.0f} ex/s", f"eta {format_duration(eta)}"]
        log.info("  ".join(parts))

    def _write_failed(self, e: OSError) -> None:
        """A full disk, a read-only mount or a vanished bucket while logging: exit 4 naming the file (checkpoints are written apart)."""
        from utils.errors import OutputWriteError

        jsonl, self.jsonl = self.jsonl, None  # nothing more goes to a file that failed; close() must not raise the same error again
        try:
            jsonl.close()
        except OSError:
            pass
        raise OutputWriteError(f"could not write {self.jsonl_fpath} ({e.strerror or e}); free space or fix permissions, then rerun with --resume auto") from e

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            try:
                self.jsonl.close()
            except OSError as e:
                self._write_failed(e)
