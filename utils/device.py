"""One runtime per way to run: CPU eager, CUDA, or XLA (PJRT). The engine only talks to a `Runtime`.

Everything specific to torch_xla lives here, behind small methods: `to_device`, `compile`,
`reduce_gradients`, `mark_step`, `reduce_sum`, `add_step_closure`, `compile_count`. The engine never
branches on the device type.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator

import torch

from utils import import_order

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "xla")


def _import_xla():
    """Import torch_xla lazily (CPU runs never pay for it) and in the safe order."""
    import_order.check_xla_importable()
    if not import_order.xla_installed():
        raise RuntimeError("--device xla needs torch_xla: pip install -r requirements.txt (torch_xla[tpu] on a TPU VM)")
    import torch_xla
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met
    import torch_xla.runtime as xr

    return torch_xla, xm, xr, met


def resolve_device(name: str) -> str:
    """`auto` -> xla when a TPU is attached (or PJRT_DEVICE is set), else cuda when available, else cpu."""
    if name not in DEVICES:
        raise ValueError(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    if name != "auto":
        return name
    if os.environ.get("PJRT_DEVICE") == "TPU" or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"):
        return "xla"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


@dataclasses.dataclass
class Runtime:
    """Where tensors live and how steps, reductions and host reads happen."""

    kind: str  # "cpu" | "cuda" | "xla"
    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- data -----------------------------------------------------------------------------
    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def device_loader(self, batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Host batches -> device batches; on XLA a background thread overlaps the copies with compute."""
        for batch in batches:
            yield self.to_device(batch)

    # ---- step -----------------------------------------------------------------------------
    def compile(self, fn: Callable, name: str) -> Callable:
        """Wrap a whole step so it runs as one graph (XLA); identity elsewhere."""
        return fn

    def autocast(self):
        enabled = self.precision == "bf16" and self.kind != "cpu"
        return torch.autocast(device_type=self.kind, dtype=torch.bfloat16, enabled=enabled)

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average gradients over data-parallel processes before clipping (no-op: one process, DDP, or SPMD)."""

    def mark_step(self) -> None:
        """End of a step: cut and launch the XLA graph; nothing to do in eager mode."""

    def add_step_closure(self, fn: Callable, args: tuple = ()) -> None:
        """Run `fn(*args)` once the step's values exist on the host (immediately in eager mode)."""
        fn(*args)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a no-op with one process)."""
        if self.world_size == 1:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    def wait(self) -> None:
        """Block until queued device work is done (for timing)."""
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- diagnostics ----------------------------------------------------------------------
    def compile_count(self) -> int | None:
        return None

    def transfer_count(self) -> int | None:
        return None

    def describe(self) -> str:
        return f"{self.kind} ({self.device}), process {self.rank} of {self.world_size}, precision {self.precision}"


class XlaRuntime(Runtime):
    """PJRT device (TPU, or CPU with PJRT_DEVICE=CPU for tests)."""

    def __init__(self, precision: str = "fp32"):
        torch_xla, xm, xr, met = _import_xla()
        self._torch_xla, self._xm, self._xr, self._met = torch_xla, xm, xr, met
        super().__init__(kind="xla", device=torch_xla.device(), rank=xr.global_ordinal(), world_size=xr.world_size(), precision=precision)

    def device_loader(self, batches):
        import torch_xla.distributed.parallel_loader as pl

        return iter(pl.MpDeviceLoader(batches, self.device))

    def to_device(self, batch):
        return {k: v.to(self.device) for k, v in batch.items()}

    def compile(self, fn, name):
        return self._torch_xla.compile(fn, full_graph=True, name=name)

    def autocast(self):
        return torch.autocast(device_type="xla", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def reduce_gradients(self, optimizer):
        # PJRT multi-process: all-reduce gradients inside the graph (no host sync); a no-op with one process.
        if self.world_size > 1:
            self._xm.reduce_gradients(optimizer)

    def mark_step(self):
        self._torch_xla.sync()

    def add_step_closure(self, fn, args=()):
        self._xm.add_step_closure(fn, args=args)

    def reduce_sum(self, t):
        if self.world_size == 1:
            return t
        return self._xm.all_reduce(self._xm.REDUCE_SUM, t)

    def wait(self):
        self._xm.wait_device_ops()

    def compile_count(self):
        data = self._met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def transfer_count(self):
        data = self._met.metric_data("TransferFromDeviceTime")
        return int(data[0]) if data else 0


def make_runtime(device: str = "auto", precision: str = "fp32") -> Runtime:
    """Pick the runtime for this process from `--device` and `--precision`."""
    kind = resolve_device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"--precision {precision!r} is not one of fp32, bf16")
    if kind == "xla":
        return XlaRuntime(precision=precision)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False; use --device cpu or auto")
        return Runtime(kind="cuda", device=torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))), precision=precision)
    return Runtime(kind="cpu", device=torch.device("cpu"), precision=precision)
