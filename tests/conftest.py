"""Shared test setup: PJRT on CPU, torch_xla imported before TensorFlow, one digits dataset per session."""

import os
import sys

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py: OpenMP workers must not spin against the TF input threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from utils import import_order  # noqa: E402

# torch_xla before TensorFlow (see utils/import_order.py), for every test module in this process.
import_order.setup_import_order()


@pytest.fixture(scope="session", autouse=True)
def _xla_device_first():
    """Start the PJRT device before any test runs a CPU backward: the other order breaks the next XLA backward (torch_xla harness gotcha, INTERNAL ASSERT device_ready_queues_)."""
    import torch_xla

    torch_xla.device()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """A TFDS data dir with the embedded digits dataset prepared in it."""
    import datasets

    dpath = str(tmp_path_factory.mktemp("tfds"))
    datasets.prepare_digits(dpath)
    return dpath


@pytest.fixture(scope="session")
def xla_device():
    """The PJRT CPU device, initialised before any CPU backward runs in this process (torch_xla harness gotcha)."""
    import torch_xla

    return torch_xla.device()
