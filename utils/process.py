"""The process environment the program needs, set in one place (stdlib only: it runs before torch is imported).

- `OMP_WAIT_POLICY=PASSIVE`: OpenMP workers that sleep instead of spinning. libgomp reads it once, when
  torch loads it, so it must be in the environment before `import torch`. With the TF input threads (or
  any other process) on the same cores, spinning workers made a CPU train step 5x slower on 2 cores;
  sleeping ones cost nothing measurable.
- `TF_CPP_MIN_LOG_LEVEL=2`: TensorFlow's C++ start-up chatter off (warnings and errors still show).
- `TQDM_DISABLE=1`: cell-eval's progress bars (one per perturbation and metric) would bury the training log.
- `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow's oneDNN kernels off. TF is only the input pipeline here (decode, crop, resize, pp ops: no
  oneDNN kernels, and the pp parity tests pass bit-exact either way), and with them on, `import tensorflow` writes 4 lines to stderr
  ("oneDNN custom operations are on ...", twice, each after absl's "log messages before absl::InitializeLog()" notice) that no log
  level silences.
- `TF_CPU_ALLOCATOR_USE_BFC=true`: TensorFlow's tensors on the host come from its best-fit-with-coalescing pool instead of malloc.
  A train batch (128x224x224x3 float32: 77 MB) is larger than glibc serves from a thread's arena, so with malloc every batch was a
  fresh mmap and 19k page faults, about 10% of the pipeline's CPU; the pool reuses the memory of the batches torch has released. On
  the ImageNet train pp string (tools/bench_input_pipeline.py, 2 cores) it cut CPU per image from 1.4-1.9 to 1.1-1.3 ms with the
  same peak RSS. The pool never gives memory back to the OS and is capped at 64 GiB of tensors (`TF_CPU_BFC_MEM_LIMIT_IN_MB` raises
  it; encoded records, the shuffle buffer's and the raw cache's strings, live outside it).
- Warning filters: tf.data hands out read-only NumPy buffers and `torch.from_numpy` warns about each one;
  the batches are never written to (mixup makes new tensors), so the warning says nothing.

Values already in the environment win. `main.py` applies `env_defaults()` before its first import of
torch; `setup_process()` (the CLI and the test configuration call it) applies the same and the filters.
"""

import os
import warnings

ENV_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TQDM_DISABLE": "1",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_CPU_ALLOCATOR_USE_BFC": "true",
}


def env_defaults() -> dict[str, str]:
    """The variables of `ENV_DEFAULTS` that the environment does not set yet."""
    return {k: v for k, v in ENV_DEFAULTS.items() if k not in os.environ}


def setup_process() -> None:
    os.environ.update(env_defaults())
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
