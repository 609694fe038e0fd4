"""torch_xla must be imported before TensorFlow; our code makes the wrong order impossible or a clear error."""

import subprocess
import sys

import pytest

from tests import proc

REPO = __file__.rsplit("/tests/", 1)[0]


def _run(code: str) -> subprocess.CompletedProcess:
    return proc.run([sys.executable, "-c", code], cwd=REPO, timeout=120, env={"PJRT_DEVICE": "CPU", "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
def test_tf_import_brings_torch_xla_first_and_xla_then_works():
    r = _run(
        "import sys\nfrom utils.tf_import import tf\nassert list(sys.modules).index('torch_xla') < list(sys.modules).index('tensorflow')\n"
        "from utils.device import make_runtime\nrt = make_runtime('xla')\nimport torch\nprint('ok', (torch.ones(2, device=rt.device) * 2).sum().item())"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok 4.0" in r.stdout


@pytest.mark.slow
def test_tensorflow_first_is_a_clear_error_not_an_llvm_abort():
    r = _run("import tensorflow\nfrom utils.device import make_runtime\nmake_runtime('xla')")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "tensorflow was imported before torch_xla" in r.stderr
    assert "ImportOrderError: tensorflow was imported before torch_xla" in r.stderr, "a Python error (a RuntimeError), not an abort"
