"""Import TensorFlow safely next to torch_xla, and keep it off every accelerator.

Use `from utils.tf_import import tf` instead of `import tensorflow as tf`. Importing it also applies the process set-up (`utils.process`: quiet TF logs, the
NumPy read-only warning filter).
"""

import os

from utils import process
from utils.import_order import setup_import_order


def _import_tf():
    setup_import_order()
    # TF must never take the TPU (torch_xla owns libtpu) nor a GPU. TPU_LOAD_LIBRARY=0 stops TF from
    # loading libtpu at import; the restore keeps the variable from leaking into child processes.
    saved = os.environ.get("TPU_LOAD_LIBRARY")
    os.environ["TPU_LOAD_LIBRARY"] = "0"
    process.setup_process()
    try:
        import tensorflow as tf_module
    finally:
        if saved is None:
            os.environ.pop("TPU_LOAD_LIBRARY", None)
        else:
            os.environ["TPU_LOAD_LIBRARY"] = saved
    for kind in ("GPU", "TPU"):
        try:
            tf_module.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            pass  # already initialised or no such device kind: nothing to hide
    return tf_module


tf = _import_tf()
