"""Device stats at log points: the device kind (for the MFU peak table) and device memory.

- CUDA: peak allocated and reserved memory since the last read (`torch.cuda.max_memory_*`, reset after each read, as torchtitan
  does), the device's total, allocation retries and OOMs: `dev/mem_peak_gib`, `dev/mem_reserved_peak_gib`, `dev/mem_limit_gib`,
  `dev/alloc_retries`, `dev/ooms`.
- XLA, one device per process (TPU, or PJRT multi-process): `xm.get_memory_info` -> `dev/mem_used_gib`, `dev/mem_peak_gib`,
  `dev/mem_limit_gib`. It is not available under SPMD (torch_xla refuses the virtual device: pytorch/xla#9022) nor on PJRT CPU
  (UNIMPLEMENTED): one info line says so and the stats are skipped.
- CPU: none (the host stats cover it).
None of these runs a device computation: they read allocator counters, so they are safe inside the logging closure.
"""

import logging

import torch

log = logging.getLogger(__name__)

GIB = 2.0**30


def get_device_kind(kind: str, device: torch.device) -> str | None:
    """ "NVIDIA H100 80GB HBM3", "TPU v5 lite", ...; None on CPU or when the runtime does not say."""
    if kind == "cuda":
        return torch.cuda.get_device_name(device)
    if kind != "xla":
        return None
    import torch_xla.core.xla_model as xm

    try:
        name = xm.xla_device_kind(device)
    except RuntimeError:  # the SPMD virtual device (SPMD:0) has no kind of its own
        log.info("device kind: not reported for %s; MFU needs --peak_tflops here", device)
        return None
    return None if not name or name.lower() == "cpu" else name


class DeviceStats:
    """`read` -> the `dev/*` scalars of the runtime's device (see the module doc)."""

    def __init__(self, kind: str, device: torch.device, spmd: bool = False):
        self.kind, self.device = kind, device
        self.enabled = kind in ("cuda", "xla")
        if kind == "xla" and spmd:
            log.info("device memory stats: not available under SPMD (torch_xla has no memory info for the SPMD virtual device, pytorch/xla#9022)")
            self.enabled = False

    def read(self, step: int, steps_per_s: float) -> dict[str, float]:
        if not self.enabled:
            return {}
        if self.kind == "cuda":
            return self._read_cuda()
        return self._read_xla()

    def _read_cuda(self) -> dict[str, float]:
        stats = torch.cuda.memory_stats(self.device)
        out = {
            "dev/mem_peak_gib": torch.cuda.max_memory_allocated(self.device) / GIB,
            "dev/mem_reserved_peak_gib": torch.cuda.max_memory_reserved(self.device) / GIB,
            "dev/mem_limit_gib": torch.cuda.get_device_properties(self.device).total_memory / GIB,
            "dev/alloc_retries": float(stats.get("num_alloc_retries", 0)),
            "dev/ooms": float(stats.get("num_ooms", 0)),
        }
        torch.cuda.reset_peak_memory_stats(self.device)
        return out

    def _read_xla(self) -> dict[str, float]:
        import torch_xla.core.xla_model as xm

        try:
            info = xm.get_memory_info(self.device)
        except RuntimeError as e:  # PJRT CPU: "UNIMPLEMENTED: GetAllocatorStats is not supported"
            log.info("device memory stats: not available on this XLA device (%s)", str(e).splitlines()[0])
            self.enabled = False
            return {}
        out = {"dev/mem_used_gib": info["bytes_used"] / GIB, "dev/mem_limit_gib": info["bytes_limit"] / GIB}
        if "peak_bytes_used" in info:
            out["dev/mem_peak_gib"] = info["peak_bytes_used"] / GIB
        return out
