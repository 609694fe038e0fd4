"""File backends of `utils.logging.MetricLogger`: `metrics.jsonl`, tensorboard events (`tb/`) and timm's per-epoch `summary.csv`.

The output dir may be remote (`gs://...`): tensorboard writes there itself, the others go through `utils.fs`. A flush of a remote
file re-uploads the whole object, so metrics.jsonl is flushed at most every `REMOTE_FLUSH_S` seconds there.

summary.csv is timm's `update_summary` table: one row per epoch, `epoch`, `step`, then `train_<k>` (the epoch's last logged
values), `eval_<k>` and `eval_ema_<k>` (empty in epochs without an eval) and `lr`. Columns appear when a value first does (the
first eval), so the file is rewritten whole (atomically) at each epoch end; on resume the rows of epochs past the checkpoint are
dropped, so a resumed run never writes an epoch twice.
"""

import csv
import io
import json
import os
import time

from utils import fs

REMOTE_FLUSH_S = 60.0


class JsonlBackend:
    """One JSON object per write: `{"step": s, "train/loss": ..., ...}`."""

    def __init__(self, output_dpath: str):
        self.fpath = fs.join(output_dpath, "metrics.jsonl")
        self.fd = fs.open_file(self.fpath, "a")
        self.flush_every_s = REMOTE_FLUSH_S if fs.is_remote(output_dpath) else 0.0
        self.t_flushed = time.perf_counter()

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.fd is None:
            return
        try:
            self.fd.write(json.dumps({"step": step, **scalars}) + "\n")
            if time.perf_counter() - self.t_flushed >= self.flush_every_s:
                self.fd.flush()
                self.t_flushed = time.perf_counter()
        except OSError as e:
            self._write_failed(e)

    def _write_failed(self, e: OSError) -> None:
        """A full disk, a read-only mount or a vanished bucket while logging: exit 4 naming the file (checkpoints are written apart)."""
        from utils.errors import OutputWriteError

        fd, self.fd = self.fd, None  # nothing more goes to a file that failed; close() must not raise the same error again
        try:
            fd.close()
        except OSError:
            pass
        raise OutputWriteError(f"could not write {self.fpath} ({e.strerror or e}); free space or fix permissions, then rerun with --resume auto") from e

    def end_epoch(self, epoch: int, step: int) -> None:
        pass

    def close(self) -> None:
        if self.fd is None:
            return
        try:
            self.fd.close()
        except OSError as e:
            self._write_failed(e)
        self.fd = None


class TensorboardBackend:
    """Scalars as tensorboard events under `output_dir/tb` (`tensorboard --logdir output_dir`)."""

    def __init__(self, output_dpath: str):
        from torch.utils.tensorboard import SummaryWriter

        self.dpath = os.path.join(output_dpath, "tb")
        self.writer = SummaryWriter(self.dpath)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def end_epoch(self, epoch: int, step: int) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# MetricLogger prefix -> summary.csv column prefix, in column order (timm: train_*, eval_*; then our EMA eval), lr last.
CSV_PREFIXES = (("train/", "train_"), ("eval/", "eval_"), ("eval_ema/", "eval_ema_"))
CSV_SKIP = ("train/epoch", "train/lr", "train/steps_per_s", "train/examples_per_s")


class CsvSummaryBackend:
    """timm's summary.csv: one row per epoch (see the module doc)."""

    def __init__(self, output_dpath: str):
        self.fpath = fs.join(output_dpath, "summary.csv")
        self.rows: list[dict] = []
        if fs.exists(self.fpath):
            with fs.open_file(self.fpath, "r") as fd:
                self.rows = list(csv.DictReader(fd))
        self.current: dict[str, float] = {}

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            if k == "train/lr":
                self.current["lr"] = v
            if k in CSV_SKIP:
                continue
            for prefix, column in CSV_PREFIXES:
                if k.startswith(prefix):
                    self.current[column + k[len(prefix) :].replace("/", "_")] = v

    def end_epoch(self, epoch: int, step: int) -> None:
        """Row `epoch` (1-based, as timm counts finished epochs) with this epoch's values; the file is rewritten atomically."""
        row = {"epoch": epoch + 1, "step": step, **{k: v for k, v in self.current.items() if k != "lr"}}
        if "lr" in self.current:
            row["lr"] = self.current["lr"]
        # Rows from this epoch on belong to an earlier run that went past the checkpoint this one resumed from.
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch + 1] + [row]
        self.current = {k: v for k, v in self.current.items() if k.startswith("train_") or k == "lr"}  # eval values belong to their epoch only
        columns = _ordered_columns(self.rows)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        fs.write_text_atomic(self.fpath, text.getvalue(), what="--output_dir")

    def close(self) -> None:
        pass


def _ordered_columns(rows: list[dict]) -> list[str]:
    """epoch, step, train_*, eval_* (not EMA), eval_ema_*, lr: each group in first-seen order."""
    seen: list[str] = []
    for r in rows:
        seen += [k for k in r if k not in seen]
    groups = [["epoch", "step"]]
    groups.append([k for k in seen if k.startswith("train_")])
    groups.append([k for k in seen if k.startswith("eval_") and not k.startswith("eval_ema_")])
    groups.append([k for k in seen if k.startswith("eval_ema_")])
    groups.append(["lr"] if "lr" in seen else [])
    return [k for g in groups for k in g]
