"""One runtime per way to run: CPU eager, CUDA, or XLA (PJRT). The engine only talks to a `Runtime`.

Everything specific to torch_xla lives here, behind small methods: `to_device`, `compile`,
`reduce_gradients`, `mark_step`, `reduce_sum`, `add_step_closure`, `compile_count`. The engine never
branches on the device type. The torch runtimes' speed options (`--compile`, `--channels_last`, `--tf32`,
`--pin_memory`) act through `place_model`, `to_device`, `device_loader` and `compile_forward` (`utils.speed`).
"""

import dataclasses
import gc
import itertools
import logging
import os
import pickle
import weakref
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from utils import import_order, settings, speed

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "xla")
PRECISIONS = ("fp32", "bf16")


class DeviceUnavailableError(RuntimeError):
    """The requested device or its library is not there (a set-up problem, not a bug)."""


def _import_xla():
    """Import torch_xla lazily (CPU runs never pay for it) and in the safe order."""
    import_order.check_xla_importable()
    if not import_order.xla_installed():
        raise DeviceUnavailableError("--device xla needs torch_xla: pip install -r requirements.txt (torch_xla[tpu] on a TPU VM)")
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
    rank: int = 0  # this process's index for data sharding and I/O
    world_size: int = 1  # number of processes that each feed their own share of the data
    precision: str = "fp32"
    parallel: str = "none"
    n_devices: int = 1  # devices the global batch is split over (SPMD: all chips of all hosts)
    options: speed.SpeedOptions = dataclasses.field(default_factory=speed.SpeedOptions)  # set by make_runtime, checked against `kind` there

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- model ----------------------------------------------------------------------------
    def place_model(self, model: torch.nn.Module, image_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
        """The model on the device (before `wrap_model`); with --channels_last its 4-D weights in NHWC order, for (c, h, w) images only."""
        if self.options.channels_last:
            speed.check_channels_last_input(image_shape)
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Data-parallel or sharding wrapper (DDP, FSDPv2); the identity when there is none."""
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain module (timm state_dict names) under any wrapper."""
        return getattr(model, "module", model)

    # ---- data -----------------------------------------------------------------------------
    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: speed.to_channels_last(v) for k, v in out.items()} if self.options.channels_last else out

    def device_loader(self, batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Host batches -> device batches; on XLA, and on CUDA with --pin_memory, a background thread overlaps the copies with compute."""
        if self.options.pin_memory:
            return speed.cuda_batches(batches, self.device, self.options.channels_last)
        return (self.to_device(batch) for batch in batches)

    # ---- step -----------------------------------------------------------------------------
    def compile(self, fn: Callable, name: str) -> Callable:
        """Wrap a whole step so it runs as one graph (XLA); identity elsewhere."""
        return fn

    def compile_forward(self, fn: Callable) -> Callable:
        """With --compile (cpu, cuda): torch.compile of a step's forward and loss, whose backward AOTAutograd compiles with it; else `fn`."""
        return speed.compile_forward(fn) if self.options.compile else fn

    def autocast(self):
        return torch.autocast(device_type=self.kind, dtype=torch.bfloat16, enabled=self.precision == "bf16")

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

    def gather_objects(self, items: list) -> list:
        """Every process's `items` (picklable host objects), concatenated in process order, on every process: a collective, like `reduce_sum`."""
        if self.world_size == 1:
            return list(items)
        gathered: list = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, list(items))
        return [item for part in gathered for item in part]

    def any_process(self, flag: bool) -> bool:
        """True on every process if `flag` is True on any of them: a collective, so every process calls it at the same step."""
        if self.world_size == 1:
            return flag
        return bool(self.reduce_sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def get_rng_state(self) -> dict:
        """RNG state of the device beyond torch's CPU and CUDA generators (`utils.checkpoint.get_rng_state` has those), for checkpoints."""
        return {}

    def set_rng_state(self, state: dict) -> None:
        """Restore what `get_rng_state` returned; keys of other runtimes are ignored."""

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
        return (
            f"{self.kind} ({self.device}), parallel {self.parallel}, process {self.rank} of {self.world_size}, {self.n_devices} device(s) for the global "
            f"batch, precision {self.precision}, speed options: {self.options.describe()}"
        )

    def close(self) -> None:
        """End of the run: tear down what this runtime set up (the default process group under torchrun); once per process,
        nothing runs on the runtime afterwards."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class XlaRuntime(Runtime):
    """PJRT device (TPU, or CPU with PJRT_DEVICE=CPU for tests)."""

    def __init__(self, precision: str = "fp32", cache_dpath: str | None = None, parallel: str = "none"):
        torch_xla, xm, xr, met = _import_xla()
        self._torch_xla, self._xm, self._xr, self._met = torch_xla, xm, xr, met
        if cache_dpath:
            # Before any computation. One cache per process in multi-process mode; on PJRT CPU deserialisation fails (upstream), so it pays on TPU only.
            path = cache_dpath if parallel != "pjrt" else os.path.join(cache_dpath, f"proc{xr.global_ordinal()}")
            xr.initialize_cache(path, readonly=False)
        world = xr.world_size()
        super().__init__(
            kind="xla", device=torch_xla.device(), rank=xr.global_ordinal(), world_size=world, precision=precision, parallel=parallel, n_devices=world
        )

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

    def gather_objects(self, items):
        if self.world_size == 1:
            return list(items)
        # PJRT multi-process: the rendezvous hands every process the payload of every other one (an all-gather of bytes).
        payloads = self._xm.rendezvous("gather_objects", pickle.dumps(list(items)))
        return [item for payload in payloads for item in pickle.loads(payload)]

    def get_rng_state(self):
        return {"xla": int(self._xm.get_rng_state(self.device))}

    def set_rng_state(self, state):
        if "xla" in state:
            self._xm.set_rng_state(int(state["xla"]), self.device)

    def wait(self):
        self._xm.wait_device_ops()

    def close(self):
        # XLA runs asynchronously: queued executions finish before teardown starts. close() runs in main.py's `finally`, so a failure here is logged, never
        # raised over an exception that may already be on its way out.
        try:
            self._xm.wait_device_ops()
        except Exception:
            log.exception("waiting for the XLA device at exit failed")
        super().close()

    def compile_count(self):
        data = self._met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def transfer_count(self):
        data = self._met.metric_data("TransferFromDeviceTime")
        return int(data[0]) if data else 0


class SpmdRuntime(XlaRuntime):
    """SPMD over a device mesh: one process per host, one program for all chips.

    Data parallel (`parallel="spmd"`): parameters replicated, the global batch sharded along the `data`
    mesh axis; the compiler inserts the gradient all-reduce, so the step stays plain PyTorch. FSDPv2
    (`parallel="fsdp"`): parameters, gradients and optimizer state sharded along the `fsdp` axis too.
    Each host loads only its slice of the global batch (`minibatch=True` with several hosts).
    """

    def __init__(self, precision: str = "fp32", cache_dpath: str | None = None, parallel: str = "spmd"):
        _, _, xr, _ = _import_xla()
        xr.use_spmd()  # before any XLA tensor exists
        import torch_xla.distributed.spmd as xs

        super().__init__(precision=precision, cache_dpath=cache_dpath, parallel=parallel)
        self._xs = xs
        n = xr.global_runtime_device_count()
        self.axis = "fsdp" if parallel == "fsdp" else "data"
        # A 1-D mesh: 2-D meshes reject 1-D inputs (labels, masks) in 2.9's input sharding.
        self.mesh = xs.Mesh(np.arange(n), (n,), (self.axis,))
        xs.set_global_mesh(self.mesh)
        self.rank, self.world_size, self.n_devices = xr.process_index(), xr.process_count(), n

    def wrap_model(self, model):
        if self.parallel != "fsdp":
            return model
        from torch_xla.experimental.spmd_fully_sharded_data_parallel import SpmdFullyShardedDataParallel as FSDPv2

        return FSDPv2(model, mesh=self.mesh)  # mesh is keyword-only in 2.9

    def device_loader(self, batches):
        import torch_xla.distributed.parallel_loader as pl

        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return iter(())
        # Shard every input along its batch dimension; with several hosts each one feeds its own slice.
        sharding = {k: self._xs.ShardingSpec(self.mesh, (self.axis,) + (None,) * (v.ndim - 1), minibatch=self.world_size > 1) for k, v in first.items()}
        return iter(pl.MpDeviceLoader(itertools.chain([first], batches), self.device, input_sharding=sharding))

    def reduce_sum(self, t):
        return t  # one global program: device values are already totals over every host

    def gather_objects(self, items):
        return list(items)  # one global program: every host reads the global (all-host) batch and outputs, so its records already cover every host

    def any_process(self, flag):
        if self.world_size == 1:
            return flag
        return self._any_host(flag)

    def _any_host(self, flag: bool) -> bool:
        """A host value summed over hosts: one entry per local device, sharded along the mesh axis, so the global sum sees every host's entries."""
        local_t = torch.full((self._xr.addressable_runtime_device_count(),), float(flag))
        spec = self._xs.ShardingSpec(self.mesh, (self.axis,), minibatch=True)
        global_t = self._xm.send_cpu_data_to_device([local_t], self.device, input_sharding=spec)[0]
        return bool(global_t.sum().item() > 0)

    def reduce_gradients(self, optimizer):
        pass  # inserted by the SPMD partitioner


class DdpRuntime(Runtime):
    """torchrun + DistributedDataParallel on CUDA (nccl) or CPU (gloo).

    The runtime owns teardown order. A DDP wrapper's C++ Reducer holds a reference to the process group; if the Reducer is the last holder (the wrapper freed
    after `destroy_process_group`), `~ProcessGroupGloo` runs inside the Reducer's pybind dealloc with the GIL held and joins the gloo worker threads, while a
    worker that is destroying the last finished collective (its tensors have Python objects) waits for the GIL: a deadlock at exit (5 of 20 runs of
    tests/ddp_worker.py on 2 CPU cores; tools/stress_ddp_teardown.py counts them). So `close()` drops every wrapper's Reducer while the process group is still
    registered, and the last reference goes with `destroy_process_group`, whose ProcessGroup binding releases the GIL before destructing.
    """

    def __init__(self, kind: str, precision: str = "fp32"):
        backend = "nccl" if kind == "cuda" else "gloo"
        device = get_local_cuda_device() if kind == "cuda" else torch.device("cpu")
        if kind == "cuda":
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend=backend)
        world = torch.distributed.get_world_size()
        super().__init__(kind=kind, device=device, rank=torch.distributed.get_rank(), world_size=world, precision=precision, parallel="ddp", n_devices=world)
        self._ddp_models = weakref.WeakSet()  # weak: the caller owns its model; close() only needs the ones still alive

    def wrap_model(self, model):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[self.device.index] if self.kind == "cuda" else None)
        self._ddp_models.add(ddp)
        return ddp

    def close(self):
        if self.kind == "cuda":
            try:
                torch.cuda.synchronize(self.device)  # the last NCCL kernels are done before their communicator goes
            except Exception:  # as XlaRuntime.close: never raise over the exception main.py's `finally` may be handling
                log.exception("waiting for the CUDA device at exit failed")
        # No barrier: on an error path (close() runs in main.py's `finally`) a peer may sit in another collective, and a barrier would pair with it and hang
        # until the process-group timeout; every collective we issue is waited for where it is issued, and DDP waits for its gradient buckets within backward.
        for ddp in list(self._ddp_models):
            # What DDP holds that is bound to the process group: the same three attributes its __getstate__ drops. The logger holds the Reducer too.
            ddp.logger = ddp.reducer = ddp.process_group = None
        self._ddp_models.clear()
        gc.collect()  # anything unreachable that still holds the group (a wrapper or a Work in a reference cycle) goes now, while the group is registered
        super().close()


def get_cuda_index(local_rank: int, n_visible: int) -> int:
    """This process's GPU among the `n_visible` it sees: 0 when it sees one (a launcher or Slurm's GPU binding masked CUDA_VISIBLE_DEVICES down to one per
    task), else LOCAL_RANK (torchrun, or Slurm tasks that each see the node's GPUs)."""
    if n_visible == 1:
        return 0
    if local_rank >= n_visible:
        raise DeviceUnavailableError(
            f"LOCAL_RANK {local_rank} but this process sees {n_visible} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
            "start one process per GPU, or let each see one GPU"
        )
    return local_rank


def get_local_cuda_device() -> torch.device:
    """This process's GPU: `get_cuda_index` of LOCAL_RANK among the visible GPUs."""
    return torch.device("cuda", get_cuda_index(int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()))


PARALLEL = ("auto", "none", "spmd", "fsdp", "pjrt", "ddp")


def resolve_parallel(parallel: str, kind: str) -> str:
    """`auto`: SPMD on TPU, DDP under torchrun (WORLD_SIZE > 1) on CUDA/CPU, else none."""
    if parallel not in PARALLEL:
        raise ValueError(f"--parallel {parallel!r} is not one of {', '.join(PARALLEL)}")
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if parallel == "auto":
        if kind == "xla":
            return "spmd" if os.environ.get("PJRT_DEVICE", "TPU") == "TPU" and not torchrun else "none"
        return "ddp" if torchrun else "none"
    if parallel in ("spmd", "fsdp", "pjrt") and kind != "xla":
        raise ValueError(f"--parallel {parallel} needs the XLA device (--device xla), got --device {kind}")
    if parallel == "ddp" and kind == "xla":
        raise ValueError("--parallel ddp runs on cuda or cpu; on XLA use --parallel spmd (recommended) or pjrt")
    if parallel == "ddp" and not torchrun:
        raise ValueError("--parallel ddp needs torchrun (WORLD_SIZE > 1): torchrun --nproc_per_node=N main.py ...")
    return parallel


def _torch_runtime(kind: str, precision: str, parallel: str, cache_dpath: str | None) -> Runtime:
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda but torch.cuda.is_available() is False; use --device cpu or auto")
    device_t = get_local_cuda_device() if kind == "cuda" else torch.device("cpu")
    return Runtime(kind=kind, device=device_t, precision=precision)


def _ddp_runtime(kind: str, precision: str, parallel: str, cache_dpath: str | None) -> Runtime:
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("--device cuda but torch.cuda.is_available() is False; use --device cpu or auto")
    return DdpRuntime(kind, precision=precision)


def _xla_runtime(kind: str, precision: str, parallel: str, cache_dpath: str | None) -> Runtime:
    return XlaRuntime(precision=precision, cache_dpath=cache_dpath, parallel=parallel)


def _spmd_runtime(kind: str, precision: str, parallel: str, cache_dpath: str | None) -> Runtime:
    return SpmdRuntime(precision=precision, cache_dpath=cache_dpath, parallel=parallel)


# (device family, resolved --parallel) -> the runtime; `resolve_parallel` only lets through the pairs listed here.
RUNTIMES: dict[tuple[str, str], Callable[[str, str, str, str | None], Runtime]] = {
    ("torch", "none"): _torch_runtime,
    ("torch", "ddp"): _ddp_runtime,
    ("xla", "none"): _xla_runtime,
    ("xla", "pjrt"): _xla_runtime,
    ("xla", "spmd"): _spmd_runtime,
    ("xla", "fsdp"): _spmd_runtime,
}


def make_runtime(
    device: str = "auto", precision: str = "fp32", parallel: str = "none", xla_cache_dir: str | None = None, options: speed.SpeedOptions | None = None
) -> Runtime:
    """Pick the runtime for this process from `--device`, `--parallel` and `--precision`; `options` that cannot apply there are a ValueError."""
    kind = resolve_device(device)
    settings.check_choice("precision", precision, PRECISIONS)
    parallel = resolve_parallel(parallel, kind)
    options = options or speed.SpeedOptions()
    options.check_kind(kind)
    runtime = RUNTIMES["xla" if kind == "xla" else "torch", parallel](kind, precision, parallel, xla_cache_dir)
    try:
        if options.compile:
            speed.check_compiler(kind)
        if kind == "cuda":
            speed.check_cuda_device(runtime.device, precision, options)
            speed.setup_cuda(options)
    except ValueError:
        runtime.close()
        raise
    runtime.options = options
    return runtime


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """The `runtime` flags: which device, which kind of parallelism, precision, the XLA compile cache, and the torch runtimes' speed options."""

    device: str = settings.setting("auto", choices=DEVICES)
    parallel: str = settings.setting("auto", choices=PARALLEL)
    fsdp: bool = False  # shorthand for parallel "fsdp"
    xla_cache_dir: str | None = None
    precision: str = settings.setting("fp32", choices=PRECISIONS)
    compile: bool = False
    channels_last: bool = False
    tf32: bool = False
    pin_memory: bool = False

    def __post_init__(self):
        settings.check_fields(self)
        if self.fsdp:
            object.__setattr__(self, "parallel", "fsdp")
        if self.options != speed.SpeedOptions():
            self.options.check_kind(resolve_device(self.device))  # at parse time; the GPU's own checks wait for the runtime

    @property
    def options(self) -> speed.SpeedOptions:
        return speed.SpeedOptions(compile=self.compile, channels_last=self.channels_last, tf32=self.tf32, pin_memory=self.pin_memory)

    def make_runtime(self, parallel: str | None = None) -> Runtime:
        """This process's runtime (`parallel` overrides, as a PJRT worker passes "pjrt")."""
        return make_runtime(self.device, self.precision, parallel or self.parallel, self.xla_cache_dir, options=self.options)
