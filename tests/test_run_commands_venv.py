"""`run_commands.sh --step venv`: the interpreter choice and the apt-get install, on a fake worker (see tests/launch_helpers.py)."""

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.launch_helpers import SCRIPT_ENV, get_command_value, make_fake_env, run_script


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """Environment with a fake gcloud first on PATH and an empty fake remote home."""
    return make_fake_env(tmp_path)


# A fake interpreter on the fake worker: logs its argv, reports VERSION to `-V` and to `-c` code (sys.version_info and sys.version are
# patched before the code runs), and `-m venv --clear DIR` writes DIR/bin/python, another fake of the same version. `-m pip` only logs.
FAKE_PYTHON = """#!{python}
import json, os, sys

NAME = {name!r}
VERSION = {version!r}
argv = sys.argv[1:]
with open(os.environ["FAKE_WORKER_LOG"], "a") as fd:
    fd.write(json.dumps([NAME, *argv]) + "\\n")
if argv == ["-V"]:
    print("Python " + ".".join(map(str, VERSION)))
elif argv[:1] == ["-c"]:
    sys.version_info = (*VERSION, "final", 0)
    sys.version = ".".join(map(str, VERSION)) + " (fake)"
    exec(argv[1], {{"__name__": "__main__"}})
elif argv[:3] == ["-m", "venv", "--clear"]:
    bin_dpath = os.path.join(argv[3], "bin")
    os.makedirs(bin_dpath, exist_ok=True)
    with open(os.path.join(bin_dpath, "python"), "w") as fd:
        fd.write(open(__file__).read().replace("NAME = " + repr(NAME), "NAME = " + repr(argv[3] + "/bin/python"), 1))
    os.chmod(os.path.join(bin_dpath, "python"), 0o755)
elif argv[:2] != ["-m", "pip"]:
    sys.exit(f"fake python: unexpected arguments {{argv}}")
"""

# Fake sudo: logs its argv and runs the command with FAKE_SUDO=1, or fails like a sudo that wants a password when FAKE_SUDO_FAIL=1.
FAKE_SUDO = """#!{python}
import json, os, sys

argv = sys.argv[1:]
with open(os.environ["FAKE_WORKER_LOG"], "a") as fd:
    fd.write(json.dumps(["sudo", *argv]) + "\\n")
if os.environ.get("FAKE_SUDO_FAIL") == "1":
    sys.exit("sudo: a password is required")
while argv and argv[0].startswith("-"):
    argv.pop(0)
os.execvpe(argv[0], argv, {{**os.environ, "FAKE_SUDO": "1"}})
"""

# Fake apt-get: logs its argv, whether it ran under sudo and DEBIAN_FRONTEND; `install ... python3.11 ...` puts a fake python3.11 on the worker's PATH.
FAKE_APT_GET = """#!{python}
import json, os, sys

argv = sys.argv[1:]
with open(os.environ["FAKE_WORKER_LOG"], "a") as fd:
    fd.write(json.dumps(["apt-get", *argv, {{"sudo": os.environ.get("FAKE_SUDO"), "DEBIAN_FRONTEND": os.environ.get("DEBIAN_FRONTEND")}}]) + "\\n")
if "install" in argv and "python3.11" in argv:
    python311_fpath = os.path.join(os.environ["FAKE_WORKER_BIN"], "python3.11")
    with open(python311_fpath, "w") as fd:
        fd.write(os.environ["FAKE_PYTHON311"])
    os.chmod(python311_fpath, 0o755)
"""


def write_executable(fpath: Path, text: str) -> None:
    fpath.write_text(text)
    fpath.chmod(0o755)


def make_fake_python(name: str, version: tuple[int, int, int]) -> str:
    return FAKE_PYTHON.format(python=sys.executable, name=name, version=version)


@pytest.fixture
def worker_env(fake_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Environment for `--step venv` on a fake Ubuntu 22.04 worker: python3 is 3.10, there is no python3.11 yet, sudo and apt-get are fakes,
    and PATH holds nothing else but bash, env and hostname.
    """
    worker_bin_dpath = tmp_path / "worker_bin"
    worker_bin_dpath.mkdir()
    for tool in ("env", "hostname"):
        (worker_bin_dpath / tool).symlink_to(shutil.which(tool))
    write_executable(worker_bin_dpath / "python3", make_fake_python("python3", (3, 10, 12)))
    write_executable(worker_bin_dpath / "sudo", FAKE_SUDO.format(python=sys.executable))
    write_executable(worker_bin_dpath / "apt-get", FAKE_APT_GET.format(python=sys.executable))
    (Path(fake_env["FAKE_GCLOUD_HOME"]) / "tpu-train").mkdir()
    env = {key: value for key, value in fake_env.items() if key != "DEBIAN_FRONTEND"}  # real sudo resets the environment; the script must set it itself
    return {
        **env,
        **SCRIPT_ENV,
        "FAKE_GCLOUD_EXEC": "1",
        "FAKE_WORKER_PATH": str(worker_bin_dpath),
        "FAKE_WORKER_BIN": str(worker_bin_dpath),
        "FAKE_WORKER_LOG": str(tmp_path / "worker_calls.jsonl"),
        "FAKE_PYTHON311": make_fake_python("python3.11", (3, 11, 0)),
    }


def get_worker_calls(env: dict[str, str]) -> list[list]:
    log_fpath = Path(env["FAKE_WORKER_LOG"])
    if not log_fpath.exists():
        return []
    return [json.loads(line) for line in log_fpath.read_text().splitlines()]


def get_pip_installs(calls: list[list]) -> list[list[str]]:
    """The venv python's `-m pip install` argv tails, in order."""
    return [call[4:] for call in calls if call[:4] == [".venv/bin/python", "-m", "pip", "install"]]


PIP_INSTALLS = [["--upgrade", "pip"], ["-r", "requirements.txt"], ["torch_xla[tpu]==2.9.0"]]
APT_INSTALL = ["-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "python3.11", "python3.11-venv"]


def test_run_commands_venv_installs_python311_on_a_python310_worker(worker_env: dict[str, str]) -> None:
    result = run_script(["--step", "venv"], worker_env)
    assert result.returncode == 0, result.stderr
    assert "python3 is Python 3.10.12" in result.stderr and "installing python3.11 python3.11-venv with apt-get" in result.stderr
    calls = get_worker_calls(worker_env)
    apt_calls = [call for call in calls if call[0] == "apt-get"]
    assert apt_calls == [
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q", {"sudo": "1", "DEBIAN_FRONTEND": None}],
        ["apt-get", *APT_INSTALL, {"sudo": "1", "DEBIAN_FRONTEND": "noninteractive"}],
    ]
    assert ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *APT_INSTALL] in calls
    venv_calls = [call for call in calls if call[1:3] == ["-m", "venv"]]
    assert venv_calls == [["python3.11", "-m", "venv", "--clear", ".venv"]]
    assert get_pip_installs(calls) == PIP_INSTALLS
    checkout_dpath = Path(worker_env["FAKE_GCLOUD_HOME"]) / "tpu-train"
    assert (checkout_dpath / ".venv" / "bin" / "python").exists()

    # A redeploy finds python3.11 with its ensurepip and installs nothing.
    Path(worker_env["FAKE_WORKER_LOG"]).unlink()
    result = run_script(["--step", "venv"], worker_env)
    assert result.returncode == 0, result.stderr
    calls = get_worker_calls(worker_env)
    assert [call for call in calls if call[0] in ("sudo", "apt-get")] == []
    assert [call for call in calls if call[1:3] == ["-m", "venv"]] == [["python3.11", "-m", "venv", "--clear", ".venv"]]


def test_run_commands_venv_uses_python3_when_it_is_new_enough(worker_env: dict[str, str]) -> None:
    write_executable(Path(worker_env["FAKE_WORKER_BIN"]) / "python3", make_fake_python("python3", (3, 12, 3)))
    result = run_script(["--step", "venv"], worker_env)
    assert result.returncode == 0, result.stderr
    calls = get_worker_calls(worker_env)
    assert [call for call in calls if call[0] in ("sudo", "apt-get")] == []
    assert [call for call in calls if call[1:3] == ["-m", "venv"]] == [["python3", "-m", "venv", "--clear", ".venv"]]
    assert get_pip_installs(calls) == PIP_INSTALLS


def test_run_commands_venv_uses_python_env_var(worker_env: dict[str, str]) -> None:
    """PYTHON wins over the automatic choice: no apt-get even though python3 is 3.10."""
    python_fpath = Path(worker_env["FAKE_WORKER_BIN"]) / "my python"
    write_executable(python_fpath, make_fake_python("my python", (3, 12, 3)))
    result = run_script(["--step", "venv"], worker_env, PYTHON=str(python_fpath))
    assert result.returncode == 0, result.stderr
    calls = get_worker_calls(worker_env)
    assert [call for call in calls if call[0] in ("sudo", "apt-get", "python3")] == []
    assert [call for call in calls if call[1:3] == ["-m", "venv"]] == [["my python", "-m", "venv", "--clear", ".venv"]]
    assert get_pip_installs(calls) == PIP_INSTALLS


def test_run_commands_venv_python_env_var_too_old_is_an_error(worker_env: dict[str, str]) -> None:
    result = run_script(["--step", "venv"], worker_env, PYTHON="python3")
    assert result.returncode == 1
    assert "error: requirements.txt needs Python >= 3.11, PYTHON=python3 is 3.10.12" in result.stderr
    calls = get_worker_calls(worker_env)
    assert [call for call in calls if call[0] in ("sudo", "apt-get") or call[1:3] == ["-m", "venv"]] == []


def test_run_commands_venv_failed_install_names_the_fix(worker_env: dict[str, str]) -> None:
    result = run_script(["--step", "venv"], worker_env, FAKE_SUDO_FAIL="1")
    assert result.returncode == 1
    assert "could not install Python 3.11 (python3 is Python 3.10.12)" in result.stderr
    assert "sudo apt-get install -y python3.11 python3.11-venv" in result.stderr and "PYTHON=" in result.stderr
    calls = get_worker_calls(worker_env)
    assert [call for call in calls if call[1:3] == ["-m", "venv"] or call[0] == "apt-get"] == []


def test_run_commands_dry_run_venv_prints_the_apt_get_install(fake_env: dict[str, str]) -> None:
    result = run_script(["--dry-run", "--step", "venv"], fake_env, **SCRIPT_ENV)
    assert result.returncode == 0, result.stderr
    venv = get_command_value(shlex.split(result.stdout))
    assert "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q python3.11 python3.11-venv" in venv
    assert "py=python3.11" in venv and '"$py" -m venv --clear .venv' in venv

    result = run_script(["--dry-run", "--step", "venv"], fake_env, **SCRIPT_ENV, PYTHON="python3.12")
    assert result.returncode == 0, result.stderr
    venv = get_command_value(shlex.split(result.stdout))
    assert venv.startswith("cd tpu-train && py=python3.12 && ")
    assert "apt-get" not in venv
