"""Test setup for `tests/` and `test_kd.py` (pytest puts this directory on sys.path): PJRT on CPU, the program's process set-up, torch_xla before TensorFlow,
one digits dataset per session, and no process of the session left running at its end."""

import os
import signal
import sys
import uuid

from utils import process

os.environ.setdefault("PJRT_DEVICE", "CPU")
os.environ.update(process.env_defaults())  # before torch is imported, as in main.py

import pytest

from tests import proc
from utils import import_order

pytest_plugins = ["tests.bad_input_cases"]  # the `files` fixture of tests/test_bad_inputs.py

process.setup_process()  # what `python main.py` sets up, for every test in this process and the processes it starts
# torch_xla before TensorFlow (see utils/import_order.py), for every test module in this process.
import_order.setup_import_order()

# Every process this session starts inherits the tag (tests/proc.py passes it on even with an explicit env), so a leftover is found however it was started and
# wherever it was reparented. A fresh value per session: a pytest run inside a test must not claim its parent's processes.
SESSION_TAG = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
os.environ[proc.SESSION_ENV] = SESSION_TAG


def find_leftovers() -> list[proc.ProcInfo]:
    """Live processes that this session started: descendants of this process, and processes anywhere that carry the session tag."""
    me = os.getpid()
    live = proc.list_live()
    parent = {p.pid: p.ppid for p in live}
    ancestors, pid = set(), me
    while pid in parent and pid not in ancestors:
        ancestors.add(pid)
        pid = parent[pid]

    def descends(pid: int) -> bool:
        seen = set()
        while pid in parent and pid not in seen:
            seen.add(pid)
            pid = parent[pid]
            if pid == me:
                return True
        return False

    return [p for p in live if p.pid not in ancestors and (descends(p.pid) or proc.has_env(p.pid, proc.SESSION_ENV, SESSION_TAG))]


def _stop_on_sigterm(signum, frame):
    # A CI timeout (or `kill`) sends SIGTERM to pytest: stop like Ctrl-C, so every test's finally blocks and the session-end check below still kill what the
    # session started.
    raise KeyboardInterrupt(f"pytest received signal {signum}")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and so would every
        # process it starts: the Ctrl-C tests would see no signal at all. A test run behaves the same however it is launched.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a test left a process running, and kill it, so CI never leaves anything behind."""
    leftovers = find_leftovers()
    if not leftovers:
        return
    for p in leftovers:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lines = [f"  pid {p.pid} (parent {p.ppid}, group {p.pgid}): {p.cmdline[:300]}" for p in leftovers]
    message = f"{len(leftovers)} process(es) started by this test session were still running at its end (killed now); start subprocesses with tests/proc.py:"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join([message, *lines]), file=sys.stderr)
    else:
        reporter.write("\n")
        reporter.write_sep("!", "processes left running", red=True)
        for line in [message, *lines]:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _xla_device_first():
    """Start the PJRT device before any test runs a CPU backward: the other order breaks the next XLA backward (torch_xla harness gotcha,
    INTERNAL ASSERT device_ready_queues_)."""
    import torch_xla

    torch_xla.device()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """A TFDS data dir with the embedded digits dataset prepared in it."""
    import datasets

    dpath = str(tmp_path_factory.mktemp("tfds"))
    datasets.prepare_embedded(dpath)
    return dpath


@pytest.fixture(scope="session")
def xla_device():
    """The PJRT CPU device, initialised before any CPU backward runs in this process (torch_xla harness gotcha)."""
    import torch_xla

    return torch_xla.device()
