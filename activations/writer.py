"""The writer thread: finished steps in, shard files out, off the loop that drives the device.

`submit(k, outputs)` puts batch k's device outputs on a bounded queue (it blocks when `max_queue` steps are waiting: each one pins its activations in device
memory). The thread moves them to the host (`to_host`: this process's rows only), drops padding rows and rows past the example cap on the host (a
boolean-mask gather on the device would change shapes, hence recompile), buffers rows and writes a shard every `rows_per_shard` rows, then replaces the
manifest. `close()` writes the last, short shard, marks the process complete, joins the thread and re-raises anything it raised. `max_queue` 0 does the same
work inline in `submit`: synchronous per-batch copies, for comparison (tools/bench_activations.py).

Resume: the manifest's (`next_batch`, `next_row`) is where the rows of the listed shards end; the loop restarts at batch `next_batch` and the writer drops the
first `next_row` kept rows of it, so shard boundaries and bytes come out as in an uninterrupted run.
"""

import dataclasses
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable

import torch

from activations import files

log = logging.getLogger(__name__)

KILL_AFTER_SHARDS_ENV = "ACTIVATIONS_KILL_AFTER_SHARDS"  # tests: SIGKILL this process once it has written that many shards (a crash at the worst time)
_DONE = object()


@dataclasses.dataclass
class WriterStats:
    rows: int = 0
    shards: int = 0
    bytes: int = 0
    host_s: float = 0.0  # device -> host copies
    write_s: float = 0.0  # serialising and writing shards
    wait_s: float = 0.0  # the loop blocked on a full queue


class ShardWriter:
    """Writes this process's rows (see the module docstring); `names` maps output keys to the tensor names of the shards."""

    def __init__(
        self,
        dpath: str,
        manifest: files.Manifest,
        *,
        names: dict[str, str],
        rows_per_shard: int,
        max_queue: int,
        to_host: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
        metadata: dict[str, str],
        quota: int | None = None,
    ):
        self.dpath, self.manifest, self.names = dpath, manifest, names
        self.rows_per_shard, self.max_queue, self.to_host, self.metadata, self.quota = rows_per_shard, max_queue, to_host, metadata, quota
        self.stats = WriterStats()
        self._n_kept = manifest.rows
        self._skip = (manifest.next_batch, manifest.next_row)
        self._buffer: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # (batch, first kept row of it, rows)
        self._kill_after = int(os.environ.get(KILL_AFTER_SHARDS_ENV, "0"))
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if max_queue > 0:
            self._queue = queue.Queue(maxsize=max_queue)
            self._thread = threading.Thread(target=self._run, name="activations-writer", daemon=True)
            self._thread.start()

    # ---- the loop's side ----------------------------------------------------------------------
    def submit(self, k: int, outputs: dict[str, torch.Tensor]) -> None:
        if self._queue is None:
            self._handle(k, outputs)
            return
        t0 = time.perf_counter()
        while True:
            self._raise_error()
            try:
                self._queue.put((k, outputs), timeout=0.5)
                break
            except queue.Full:
                continue
        self.stats.wait_s += time.perf_counter() - t0

    def close(self, n_batches: int) -> files.Manifest:
        """Flush, mark this process complete after `n_batches` batches, join the thread; re-raises the thread's exception."""
        if self._queue is not None:
            self._raise_error()
            self._queue.put((n_batches, _DONE))
            self._thread.join()
            self._raise_error()
        else:
            self._finish(n_batches)
        return self.manifest

    def abort(self) -> None:
        """Stop the thread without writing more (the loop failed); files stay as the last manifest lists them."""
        if self._queue is None or not self._thread.is_alive():
            return
        self._error = self._error or RuntimeError("aborted")
        self._queue.put((0, _DONE))
        self._thread.join(timeout=60)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # ---- the thread's side --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            k, outputs = self._queue.get()
            if self._error is not None:
                if outputs is _DONE:
                    return
                continue  # drain, so a blocked submit gets through and sees the error
            try:
                if outputs is _DONE:
                    self._finish(k)
                    return
                self._handle(k, outputs)
            except BaseException as e:
                log.error("activations: the writer thread failed at batch %d: %s", k, e)
                self._error = e
                if outputs is _DONE:
                    return

    def _handle(self, k: int, outputs: dict[str, torch.Tensor]) -> None:
        if self.manifest.complete or k < self._skip[0]:
            return  # in the shards already (a finished process, or a multi-host resume that restarts before this process's resume point)
        t0 = time.perf_counter()
        host = self.to_host(outputs)
        del outputs  # the device buffers of this step can go
        t1 = time.perf_counter()
        self.stats.host_s += t1 - t0
        kept = torch.nonzero(host["_mask"].bool()).flatten()
        first = 0
        if k == self._skip[0] and self._skip[1]:
            first = self._skip[1]  # resumed inside this batch: its first kept rows are in the shards already
            kept = kept[first:]
        if self.quota is not None:
            kept = kept[: max(self.quota - self._n_kept, 0)]
        if len(kept):
            self._buffer.append((k, first, {self.names[key]: v.index_select(0, kept) for key, v in host.items() if key in self.names}))
            self._n_kept += len(kept)
        while self._buffered() >= self.rows_per_shard:
            self._write_shard(self.rows_per_shard, next_batch=k + 1)
        self.stats.write_s += time.perf_counter() - t1

    def _buffered(self) -> int:
        return sum(len(rows["index"]) for _, _, rows in self._buffer)

    def _finish(self, n_batches: int) -> None:
        if self.manifest.complete:
            return  # a rerun of a finished extraction: the files stay as they are
        t0 = time.perf_counter()
        if self._buffer:
            self._write_shard(self._buffered(), next_batch=n_batches)
        self.manifest.next_batch, self.manifest.next_row, self.manifest.complete = n_batches, 0, True
        files.write_manifest(self.dpath, self.manifest)
        self.stats.write_s += time.perf_counter() - t0

    def _write_shard(self, n: int, next_batch: int) -> None:
        """The first `n` buffered rows as the next shard, then the manifest with the resume point after them."""
        taken: list[dict[str, torch.Tensor]] = []
        need = n
        while need:
            k, first, rows = self._buffer[0]
            m = len(rows["index"])
            if m <= need:
                taken.append(rows)
                self._buffer.pop(0)
                need -= m
                continue
            taken.append({name: v[:need] for name, v in rows.items()})
            self._buffer[0] = (k, first + need, {name: v[need:] for name, v in rows.items()})
            need = 0
        tensors = {name: torch.cat([t[name] for t in taken]) for name in taken[0]}
        fname = files.get_shard_fname(len(self.manifest.shards))
        n_bytes = files.write_shard(files.fs.join(files.get_process_dpath(self.dpath, self.manifest.process), fname), tensors, self.metadata)
        index = tensors["index"]
        self.manifest.shards.append({"file": fname, "rows": n, "index_min": int(index.min()), "index_max": int(index.max()), "bytes": n_bytes})
        self.manifest.next_batch, self.manifest.next_row = (self._buffer[0][0], self._buffer[0][1]) if self._buffer else (next_batch, 0)
        files.write_manifest(self.dpath, self.manifest)
        self.stats.rows += n
        self.stats.shards += 1
        self.stats.bytes += n_bytes
        if self._kill_after and self.stats.shards >= self._kill_after:
            log.warning("activations: %s=%d: killing this process after shard %s", KILL_AFTER_SHARDS_ENV, self._kill_after, fname)
            os.kill(os.getpid(), signal.SIGKILL)
