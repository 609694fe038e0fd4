"""Speed options of the torch runtimes (cpu, cuda), as timm's train.py offers them, and where each one cannot apply.

`--compile`: torch.compile (TorchDynamo + Inductor) of the step's forward and loss; AOTAutograd compiles their backward with them. The
rest of the step (backward's call, gradient reduction, the norm and clipping, the optimizer update, the EMA) stays eager: Dynamo cannot
trace `Tensor.backward()` (a graph break), and compiling the whole step took 65 s against 16 s for the forward and loss alone (tiny_cnn,
2 CPU cores) for an update that `--opt_fused` already runs as one kernel per parameter group. On XLA every step is already traced and compiled as
one graph (`torch_xla.compile`), so `--compile` there is an error, not a second tracer stacked on the first.

`--channels_last`: the model's 4-D weights and every 4-D float batch tensor in NHWC memory order (the model still sees NCHW shapes);
convolutions on tensor cores run NHWC without transposes. `--tf32`: float32 matmuls on CUDA in TF32 (cuDNN convolutions already use
TF32 by PyTorch's default). `--pin_memory`: host batches pinned by a background thread and copied to the GPU on a side stream while the
previous step runs (timm's `--pin-mem` plus its prefetcher). XLA picks layouts and copies batches itself (MpDeviceLoader), and CPU has no
copy to overlap: there these are errors too.
"""

import contextlib
import dataclasses
import logging
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator

import torch

log = logging.getLogger(__name__)

# --flag -> why it cannot apply on a device kind (the kinds not listed take it).
NOT_ON = {
    "compile": {
        "xla": "on XLA every train and eval step is already traced and compiled as one graph (torch_xla.compile); drop --compile",
    },
    "channels_last": {"xla": "XLA chooses tensor layouts itself; drop --channels_last"},
    "tf32": {
        "xla": "it sets CUDA's float32 matmul precision; drop --tf32",
        "cpu": "it sets CUDA's float32 matmul precision; drop --tf32 or use --device cuda",
    },
    "pin_memory": {
        "xla": "MpDeviceLoader copies batches to the device in a background thread already; drop --pin_memory",
        "cpu": "on cpu there is no host-to-device copy to overlap; drop --pin_memory or use --device cuda",
    },
}


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """The runtime's speed options (`RuntimeConfig` fields of the same names); all off: plain eager PyTorch."""

    compile: bool = False
    channels_last: bool = False
    tf32: bool = False
    pin_memory: bool = False

    def check_kind(self, kind: str) -> None:
        """ValueError naming the first option that cannot apply on device `kind` (cpu, cuda, xla), and why."""
        for flag, reasons in NOT_ON.items():
            if getattr(self, flag) and kind in reasons:
                raise ValueError(f"--{flag} does not apply to --device {kind}: {reasons[kind]}")

    def describe(self) -> str:
        on = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return ", ".join(on) if on else "none"


def check_compiler(kind: str) -> None:
    """`--compile` needs Inductor's code generator: a C++ compiler on cpu, Triton on a GPU it supports on cuda; else one line at start-up."""
    if kind == "cpu" and not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        raise ValueError("--compile on cpu needs a C++ compiler for Inductor (g++ or clang++ on PATH); install one (apt-get install g++) or drop --compile")
    if kind == "cuda":
        import torch.utils._triton as triton_utils

        if not triton_utils.has_triton():
            raise ValueError("--compile on cuda needs Triton and a GPU it supports (compute capability 7.0+); pip install triton, or drop --compile")


def check_cuda_device(device: torch.device, precision: str, options: SpeedOptions) -> None:
    """What the GPU itself must support: bf16 (Ampere+, else autocast would emulate it slowly) and TF32 (Ampere+, else the flag does nothing)."""
    major, minor = torch.cuda.get_device_capability(device)
    name = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(f"--precision bf16 needs a GPU with bf16 arithmetic (Ampere, compute capability 8.0, or newer); {device} is {name}: use fp32")
    if options.tf32 and major < 8:
        raise ValueError(f"--tf32 needs a GPU with TF32 tensor cores (Ampere, compute capability 8.0, or newer); {device} is {name}: drop --tf32")


def setup_cuda(options: SpeedOptions) -> None:
    """Process-wide CUDA settings, as timm's train.py sets them: TF32 matmuls (with --tf32), and cuDNN's autotuner (our shapes are fixed: it pays)."""
    torch.backends.cudnn.benchmark = True
    if options.tf32:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"


def compile_forward(fn: Callable) -> Callable:
    """torch.compile of a forward (and loss) function; the shapes are fixed (drop-remainder train, padded eval), so no dynamic-shape graphs."""
    return torch.compile(fn, dynamic=False)


def is_image_batch(t: torch.Tensor) -> bool:
    """The tensors `--channels_last` reorders: 4-D floating point, [b, c, h, w]."""
    return t.ndim == 4 and t.is_floating_point()


def to_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if is_image_batch(t) else t


def check_channels_last_input(image_shape: tuple[int, ...] | None) -> None:
    """`--channels_last` reorders [b, c, h, w] batches; any other input would pass through untouched (the flag doing nothing): one line instead."""
    if image_shape is None or len(image_shape) != 3:
        what = "no image batches" if image_shape is None else f"images of shape {tuple(image_shape)}, not (c, h, w)"
        raise ValueError(f"--channels_last reorders [b, c, h, w] image batches, but this data has {what}; drop --channels_last")


def prefetch(items: Iterable, fn: Callable, depth: int = 2, name: str = "prefetch") -> Iterator:
    """`fn(item)` for every item, in order, computed by a background thread up to `depth` items ahead.

    An exception in the thread is raised in the consumer at its place in the order. Closing the generator (a `break` in the consumer) stops
    the thread and closes `items` in it (a generator can only be closed by the thread that runs it).
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((fn(item), None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((None, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            value, error = results.get()
            if error is not None:
                raise error
            if value is end:
                return
            yield value
    finally:
        stop.set()
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("the %s thread is still reading its next item after 30 s; it stops after that item", name)


def pin_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.pin_memory() for k, v in batch.items()}


def cuda_batches(batches: Iterable[dict[str, torch.Tensor]], device: torch.device, channels_last: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Host batches -> GPU batches: pinned in a background thread, copied on a side stream one batch ahead, so a copy overlaps the step before it.

    Each batch's copy records an event; the consumer's stream waits for that event only (not for the copy of the batch after it), and every
    tensor is marked as used by the consumer's stream so the caching allocator never hands its memory to the next copy too early.
    """
    stream = torch.cuda.Stream(device)

    def start_copy(host: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event]:
        with torch.cuda.stream(stream):
            out = {k: v.to(device, non_blocking=True) for k, v in host.items()}
            if channels_last:
                out = {k: to_channels_last(v) for k, v in out.items()}
            copied = torch.cuda.Event()
            copied.record(stream)
        return out, copied

    def ready(pending: tuple[dict[str, torch.Tensor], torch.cuda.Event]) -> dict[str, torch.Tensor]:
        batch, copied = pending
        current = torch.cuda.current_stream(device)
        current.wait_event(copied)
        for v in batch.values():
            v.record_stream(current)
        return batch

    pending = None
    with contextlib.closing(prefetch(batches, pin_batch, name="pin_memory")) as pinned:  # a consumer's break stops the pinning thread now
        for host in pinned:
            started = start_copy(host)
            if pending is not None:
                yield ready(pending)
            pending = started
    if pending is not None:
        yield ready(pending)
