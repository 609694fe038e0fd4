"""Host stats at log points: this process's CPU use and memory, and the host's free memory (psutil; no thread, no polling).

Read in the logging closure only, every `--log_every` steps: `cpu_percent` is then the average over the interval since the last
read (100 = one core busy all the time), which is what a log line should say. Keys: `sys/cpu_pct`, `sys/rss_gib` (resident
memory of this process), `sys/children_rss_gib` (of its child processes: data workers), `sys/host_mem_avail_gib`, `sys/load1`.
"""

import os

GIB = 2.0**30


class HostStats:
    """psutil readings of this process and the host; `read` returns the `sys/*` scalars (see the module doc)."""

    def __init__(self):
        import psutil

        self._psutil = psutil
        self.proc = psutil.Process(os.getpid())
        self.proc.cpu_percent(None)  # the first call only starts the interval

    def read(self, step: int, steps_per_s: float) -> dict[str, float]:
        children_rss = 0
        for child in self.proc.children(recursive=True):
            try:
                children_rss += child.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue  # a worker that just ended
        return {
            "sys/cpu_pct": self.proc.cpu_percent(None),
            "sys/rss_gib": self.proc.memory_info().rss / GIB,
            "sys/children_rss_gib": children_rss / GIB,
            "sys/host_mem_avail_gib": self._psutil.virtual_memory().available / GIB,
            "sys/load1": os.getloadavg()[0],
        }
