"""The one owner of the import order between torch_xla and TensorFlow.

Both bundle LLVM: `import tensorflow` followed by `import torch_xla` in one process aborts with
"LLVM ERROR: inconsistency in registered CommandLine options". TensorFlow is only ever imported
through `utils.tf_import`, which calls `setup_import_order()` first; the XLA runtime checks the
order again before it imports torch_xla, so a wrong order is a clear error instead of an abort.
"""

import importlib.util
import sys

TF_FIRST_MESSAGE = (
    "tensorflow was imported before torch_xla in this process; importing torch_xla now would abort with 'LLVM ERROR: "
    "inconsistency in registered CommandLine options'. Import TensorFlow only through utils.tf_import (which imports torch_xla first), "
    "or create the XLA runtime before building the input pipeline."
)


class ImportOrderError(RuntimeError):
    """TensorFlow came first; torch_xla can no longer be imported in this process."""


def xla_installed() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def check_xla_importable() -> None:
    """Raise the clear error if torch_xla can no longer be imported safely."""
    if "torch_xla" not in sys.modules and "tensorflow" in sys.modules:
        raise ImportOrderError(TF_FIRST_MESSAGE)


def setup_import_order() -> None:
    """Before TensorFlow: import torch_xla if it is installed and not yet imported."""
    if "torch_xla" in sys.modules or not xla_installed():
        return
    check_xla_importable()
    import torch_xla  # noqa: F401  (registers its LLVM options before TensorFlow's)
