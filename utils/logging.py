"""The console and the metric logger: one `MetricLogger` fans every scalar out to its backends (`utils.log_backends`).

Values reach the host only inside step closures (see `utils.device.Runtime.add_step_closure`), so the training step itself never
syncs. Only the main process writes. Backends: the console progress line (plain, fine when redirected), `metrics.jsonl`,
tensorboard (`tb/`), a per-epoch `summary.csv` (timm's layout) and, optionally, Weights & Biases (`utils.wandb_backend`).

The console shows this program's own lines. Third-party log records (TensorFlow, absl, torch_xla's PJRT notice, ...) below ERROR
are dropped unless `--log_level debug`; `setup_logging` also removes the stderr handler that `import torch_xla` installs through
`logging.basicConfig()`, which otherwise printed every line a second time as `INFO:train:...` on stderr.
"""

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from utils import settings

log = logging.getLogger("train")

REPO_DPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_LEVELS = ("info", "debug")
NOISY_LOGGERS = ("absl", "tensorflow", "h5py", "PIL", "matplotlib", "urllib3", "wandb")
# Console progress line: scalars shown after the loss terms, with their unit (the rest go to the files only).
CONSOLE_EXTRA = (("perf/data_wait_pct", "data wait {:.0f}%"), ("perf/mfu_pct", "mfu {:.1f}%"), ("dev/mem_peak_gib", "mem {:.2f}G"))


def is_third_party(record: logging.LogRecord) -> bool:
    """A record from a library: emitted by code outside this repository (or inside its virtualenv), or marked so by its sender."""
    if getattr(record, "third_party", False):
        return True
    path = os.path.abspath(record.pathname or "")
    return not path.startswith(REPO_DPATH + os.sep) or "site-packages" in path or "dist-packages" in path


class ConsoleFilter(logging.Filter):
    """Keeps third-party records at ERROR and above only (all of them in debug mode)."""

    def __init__(self, debug: bool = False):
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        return self.debug or record.levelno >= logging.ERROR or not is_third_party(record)


def _is_basic_config_handler(h: logging.Handler) -> bool:
    """The handler `logging.basicConfig()` adds (torch_xla's __init__ calls it): a bare stderr stream handler with the default format."""
    fmt = getattr(h.formatter, "_fmt", None)
    return type(h) is logging.StreamHandler and getattr(h, "stream", None) is sys.stderr and fmt in (None, logging.BASIC_FORMAT)


def setup_logging(is_main: bool = True, level: int = logging.INFO, debug: bool | None = None) -> None:
    """One plain format on stdout for every module; non-main processes only log warnings and errors; third-party noise filtered (see the module doc).

    `debug` None keeps the mode of an earlier call (or `TRAIN_LOG_LEVEL=debug` in the environment).
    """
    if debug is None:
        debug = os.environ.get("TRAIN_LOG_LEVEL", "info") == "debug"
    os.environ["TRAIN_LOG_LEVEL"] = "debug" if debug else "info"  # child processes and `utils.tf_import` see the same mode
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(ConsoleFilter(debug))
    handler._ours = True
    root = logging.getLogger()
    # Replace our own handler on a second call (a worker re-running setup) and basicConfig's; keep everyone else's (pytest's capture, a user's file).
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_ours", False) and not _is_basic_config_handler(h)] + [handler]
    root.setLevel((logging.DEBUG if debug else level) if is_main else logging.WARNING)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """`--profile_steps A:B` -> (A, B), global steps, both included; "" -> None."""
    if not text:
        return None
    a, sep, b = text.partition(":")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit() or not 1 <= int(a) <= int(b):
        raise ValueError(f"--profile_steps {text!r} must be A:B with 1 <= A <= B (global steps, both profiled), e.g. 10:12")
    return int(a), int(b)


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """The logging and observability flags: backends, stats, MFU, profiling, console mode."""

    tensorboard: bool = True
    summary_csv: bool = True
    wandb: bool = False
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_name: str | None = None
    wandb_mode: str = settings.setting("online", choices=("online", "offline"))
    system_stats: bool = True
    peak_tflops: float | None = settings.setting(None, range=settings.POSITIVE)
    profile_steps: str = ""
    log_level: str = settings.setting("info", choices=LOG_LEVELS)

    def __post_init__(self):
        settings.check_fields(self)
        parse_profile_steps(self.profile_steps)


class Backend(Protocol):
    """Where scalars go. `write` gets prefixed names (`train/loss`, `eval/acc1`); `end_epoch` after each epoch's eval and save."""

    def write(self, step: int, scalars: dict[str, float]) -> None: ...

    def end_epoch(self, epoch: int, step: int) -> None: ...

    def close(self) -> None: ...


class StatsSource(Protocol):
    """Scalars read at log points only (host or device stats, MFU): `read(step, steps_per_s)` -> prefixed names."""

    def read(self, step: int, steps_per_s: float) -> dict[str, float]: ...


class ConsoleBackend:
    """The progress line of `train/*` records: step, epoch, the loss terms, examples/s, a few stats and the ETA."""

    def __init__(self, total_steps: int, n_epochs: int):
        self.total_steps, self.n_epochs = total_steps, n_epochs
        self.t_first, self.step_first = None, None  # the first progress line: the ETA averages from here (past compiles and warm-up)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if "train/epoch" not in scalars:
            return  # eval and xla records: the engine logs its own line for those
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.step_first = now, step
        rate = scalars.get("train/steps_per_s", float("nan"))
        avg_rate = (step - self.step_first) / (now - self.t_first) if step > self.step_first and now > self.t_first else rate
        eta = (self.total_steps - step) / avg_rate if avg_rate == avg_rate and avg_rate > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}", f"epoch {max(1, math.ceil(scalars['train/epoch']))}/{self.n_epochs}"]
        skip = ("epoch", "steps_per_s", "examples_per_s")
        parts += [f"{k[len('train/') :]} {v:.4g}" for k, v in scalars.items() if k.startswith("train/") and k[len("train/") :] not in skip]
        if not math.isnan(rate):
            parts.append(f"{scalars['train/examples_per_s']:.0f} ex/s")
        parts += [fmt.format(scalars[k]) for k, fmt in CONSOLE_EXTRA if k in scalars and not math.isnan(scalars[k])]
        if not math.isnan(rate):
            parts.append(f"eta {format_duration(eta)}")
        log.info("  ".join(parts))

    def end_epoch(self, epoch: int, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class InputWaitTimer:
    """Host time spent blocked on the next batch (`wrap`), as a share of the wall time between two reads."""

    def __init__(self):
        self.waited_s = 0.0
        self.t_read = time.perf_counter()

    def wrap(self, batches: Iterable) -> Iterator:
        if self.waited_s == 0.0:
            self.t_read = time.perf_counter()  # the first interval starts with the first epoch, not at set-up
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.waited_s += time.perf_counter() - t0
            yield batch

    def read(self, step: int, steps_per_s: float) -> dict[str, float]:
        now = time.perf_counter()
        wall, self.t_read = now - self.t_read, now
        waited, self.waited_s = self.waited_s, 0.0
        return {"perf/data_wait_pct": 100.0 * waited / wall} if wall > 0 else {}


class MetricLogger:
    """Fans scalars out to `backends`; `train_progress` adds rates and the `stats` sources' scalars at log points."""

    def __init__(self, backends: list[Backend], is_main: bool, stats: list[StatsSource] | None = None, n_devices: int = 1):
        self.backends = list(backends) if is_main else []
        self.is_main = is_main
        self.stats = list(stats or [])
        self.n_devices = n_devices
        self.input_timer = InputWaitTimer()
        self.t_last, self.step_last = time.perf_counter(), None

    def time_input(self, batches: Iterable) -> Iterator:
        """`batches`, timing how long the loop waits for each one (perf/data_wait_pct)."""
        return self.input_timer.wrap(batches)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if not self.is_main:
            return
        record = {f"{prefix}{k}": float(v) for k, v in values.items()}
        for backend in self.backends:
            backend.write(step, record)

    def train_progress(self, step: int, epoch: int, n_epochs: int, values: dict[str, float], examples_per_step: int, epoch_frac: float = 0.0) -> None:
        """One record per log point: the step's values, the rates since the last log point, then each stats source's scalars."""
        now = time.perf_counter()
        steps_done = step - self.step_last if self.step_last is not None else None
        rate = steps_done / (now - self.t_last) if steps_done and now > self.t_last else float("nan")
        self.t_last, self.step_last = now, step
        record = {f"train/{k}": float(v) for k, v in values.items()}
        record["train/epoch"] = epoch + epoch_frac
        if not math.isnan(rate):
            record |= {"train/steps_per_s": rate, "train/examples_per_s": rate * examples_per_step}
            record["perf/examples_per_s_per_device"] = rate * examples_per_step / self.n_devices
        for source in [self.input_timer, *self.stats]:
            record |= source.read(step, rate)
        if not self.is_main:
            return
        for backend in self.backends:
            backend.write(step, record)

    def end_epoch(self, epoch: int, step: int) -> None:
        for backend in self.backends:
            backend.end_epoch(epoch, step)

    def close(self) -> None:
        """Close every backend; the first error (a full disk under metrics.jsonl) is raised after all of them are closed."""
        first = None
        for backend in self.backends:
            try:
                backend.close()
            except Exception as e:  # noqa: BLE001  (re-raised below, once the others are closed too)
                first = first or e
        self.backends = []
        if first is not None:
            raise first


def make_backends(config: LoggingConfig, output_dpath: str | None, total_steps: int, n_epochs: int, run_config: dict, resume: bool) -> list[Backend]:
    """The console, then the file backends the flags turn on (none without an output dir), then W&B."""
    from utils import fs, log_backends

    backends: list[Backend] = [ConsoleBackend(total_steps, n_epochs)]
    if not output_dpath:
        return backends
    fs.makedirs(output_dpath)
    backends.append(log_backends.JsonlBackend(output_dpath))
    if config.tensorboard:
        backends.append(log_backends.TensorboardBackend(output_dpath))
    if config.summary_csv:
        backends.append(log_backends.CsvSummaryBackend(output_dpath))
    if config.wandb:
        from utils.wandb_backend import WandbBackend

        backends.append(WandbBackend(output_dpath, config.wandb_project, config.wandb_entity, config.wandb_name, config.wandb_mode, run_config, resume))
    return backends


def make_stats(config: LoggingConfig, kind: str, device, spmd: bool) -> list[StatsSource]:
    """Host and device stats read at log points (`--system_stats`)."""
    if not config.system_stats:
        return []
    from utils.devstats import DeviceStats
    from utils.hoststats import HostStats

    return [HostStats(), DeviceStats(kind, device, spmd=spmd)]
