"""Tests for the TPU pod launch tools: `python -m train.xla_dist` and `run_commands.sh`.

A fake `gcloud` (a small script placed first on PATH) records its argv, one JSON list per line, and optionally runs the `--command` value with `bash -c` in a fake remote home. Running the command for real checks the shell quoting end to end: what main.py receives must equal what the user typed.

The remote command runs in its own session, as it would on a worker, so a background launch outlives the local `gcloud` call; SIGTERM to the fake gcloud (a test timeout) takes the remote session down with it. For the venv step the fake worker's PATH can be replaced by a directory of fake `python3`, `python3.11`, `sudo` and `apt-get` scripts that log their argv, so the interpreter choice and the apt-get install are checked without root or network.
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import proc

REPO_DPATH = Path(__file__).resolve().parent.parent
RUN_COMMANDS_FPATH = REPO_DPATH / "run_commands.sh"

FAKE_GCLOUD = """#!{python}
import json, os, signal, shutil, subprocess, sys

argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as fd:
    fd.write(json.dumps(argv) + "\\n")
if os.environ.get("FAKE_GCLOUD_EXEC") == "1":
    command = None
    for i, arg in enumerate(argv):
        if arg.startswith("--command="):
            command = arg[len("--command="):]
        elif arg == "--command":
            command = argv[i + 1]
    env = dict(os.environ)
    env.pop({tag_env!r}, None)  # a worker is another machine: what runs there is not this gcloud's descendant for tests/proc.py, so a background launch may outlive the call
    if "FAKE_WORKER_PATH" in env:
        env["PATH"] = env["FAKE_WORKER_PATH"]
    remote = None

    def hang_up(signum, frame):
        if remote is not None:
            try:
                os.killpg(remote.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, hang_up)
    signal.signal(signal.SIGINT, hang_up)
    remote = subprocess.Popen([shutil.which("bash"), "-c", command], cwd=env["FAKE_GCLOUD_HOME"], env=env, start_new_session=True)
    sys.exit(remote.wait())
sys.exit(int(os.environ.get("FAKE_GCLOUD_RC", "0")))
"""

# Stands in for the training entry point: records what it was started with.
FAKE_MAIN = """import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_MAIN_OUT"], "w") as fd:
    json.dump({"argv": args, "cwd": os.getcwd(), "pjrt": os.environ.get("PJRT_DEVICE"), "greeting": os.environ.get("GREETING")}, fd)
if "--sleep" in args:
    time.sleep(float(args[args.index("--sleep") + 1]))
"""


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """Environment with a fake gcloud first on PATH and an empty fake remote home."""
    bin_dpath = tmp_path / "bin"
    bin_dpath.mkdir()
    gcloud_fpath = bin_dpath / "gcloud"
    gcloud_fpath.write_text(FAKE_GCLOUD.format(python=sys.executable, tag_env=proc.TAG_ENV))
    gcloud_fpath.chmod(0o755)
    home_dpath = tmp_path / "home"
    home_dpath.mkdir()
    env = dict(os.environ)
    env["PATH"] = f"{bin_dpath}{os.pathsep}{env['PATH']}"
    env["FAKE_GCLOUD_LOG"] = str(tmp_path / "gcloud_calls.jsonl")
    env["FAKE_GCLOUD_HOME"] = str(home_dpath)
    for key in (
        "TPU_NAME",
        "ZONE",
        "PROJECT",
        "REPO_URL",
        "BRANCH",
        "REMOTE_DIR",
        "VENV_DIR",
        "RECIPE",
        "LAUNCH_CMD",
        "DRY_RUN",
        "STEP",
        "FOREGROUND",
        "PJRT_DEVICE",
        "PYTHON",
        "TORCH_XLA_TPU",
        "LOG_FILE",
        "PID_FILE",
    ):
        env.pop(key, None)
    return env


def get_gcloud_calls(env: dict[str, str]) -> list[list[str]]:
    log_fpath = Path(env["FAKE_GCLOUD_LOG"])
    if not log_fpath.exists():
        return []
    return [json.loads(line) for line in log_fpath.read_text().splitlines()]


def get_command_value(argv: list[str]) -> str:
    """The remote command from a gcloud argv, in either `--command=X` or `--command X` form."""
    for i, arg in enumerate(argv):
        if arg.startswith("--command="):
            return arg[len("--command=") :]
        if arg == "--command":
            return argv[i + 1]
    raise AssertionError(f"no --command in {argv}")


def run_xla_dist(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return proc.run([sys.executable, "-m", "train.xla_dist", *args], timeout=60, cwd=REPO_DPATH, env=env)


def run_script(args: list[str], env: dict[str, str], **overrides: str) -> subprocess.CompletedProcess:
    return proc.run(["bash", str(RUN_COMMANDS_FPATH), *args], timeout=60, cwd=REPO_DPATH, env={**env, **overrides})


def run_git(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = proc.run(["git", *args], timeout=60, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr


# ---- train.xla_dist ----------------------------------------------------------


def test_xla_dist_dry_run_prints_exact_command_and_runs_nothing(
    fake_env: dict[str, str],
) -> None:
    args = [
        "--tpu",
        "my-tpu",
        "--zone",
        "us-central2-b",
        "--project",
        "proj",
        "--env",
        "FOO=a b",
        "--workdir",
        "tpu-train",
        "--dry-run",
        "--",
        "python",
        "main.py",
        "--name",
        "x y",
    ]
    result = run_xla_dist(args, fake_env)
    assert result.returncode == 0, result.stderr
    remote = "cd tpu-train && FOO='a b' PJRT_DEVICE=TPU python main.py --name 'x y'"
    expected = shlex.join(
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            "my-tpu",
            "--worker=all",
            "--zone=us-central2-b",
            "--project=proj",
            f"--command={remote}",
        ]
    )
    assert result.stdout == expected + "\n"
    assert get_gcloud_calls(fake_env) == []


def test_xla_dist_env_overrides_pjrt_device(fake_env: dict[str, str]) -> None:
    result = run_xla_dist(
        [
            "--tpu",
            "t",
            "--env",
            "PJRT_DEVICE=CPU",
            "--dry-run",
            "--",
            "python",
            "main.py",
        ],
        fake_env,
    )
    assert result.returncode == 0, result.stderr
    remote = get_command_value(shlex.split(result.stdout))
    assert remote == "PJRT_DEVICE=CPU python main.py"


def test_xla_dist_workdir_keeps_tilde_expandable(fake_env: dict[str, str]) -> None:
    """`~/dir` must stay expandable by the remote shell while the rest is quoted."""
    args = [
        "--tpu",
        "t",
        "--workdir",
        "~/my dir",
        "--dry-run",
        "--",
        "python",
        "main.py",
    ]
    result = run_xla_dist(args, fake_env)
    assert result.returncode == 0, result.stderr
    remote = get_command_value(shlex.split(result.stdout))
    assert remote == "cd ~/'my dir' && PJRT_DEVICE=TPU python main.py"


def test_xla_dist_runs_gcloud_on_all_workers_with_quoted_command(fake_env: dict[str, str], tmp_path: Path) -> None:
    """The command really runs through a shell on the fake worker; arguments with spaces, quotes and `$` arrive unchanged."""
    workdir_dpath = tmp_path / "work dir"
    workdir_dpath.mkdir()
    main_fpath = workdir_dpath / "main.py"
    main_fpath.write_text(FAKE_MAIN)
    out_fpath = tmp_path / "main_out.json"
    env = {**fake_env, "FAKE_GCLOUD_EXEC": "1"}
    user_args = ["--name", "has space", "$HOME", "it's"]
    args = [
        "--tpu",
        "my-tpu",
        "--zone",
        "z1",
        "--env",
        f"FAKE_MAIN_OUT={out_fpath}",
        "--env",
        "GREETING=hello world",
        "--workdir",
        str(workdir_dpath),
        "--",
        sys.executable,
        "main.py",
        *user_args,
    ]
    result = run_xla_dist(args, env)
    assert result.returncode == 0, result.stderr

    calls = get_gcloud_calls(env)
    assert len(calls) == 1
    argv = calls[0]
    assert argv[:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--worker=all"]
    assert "--zone=z1" in argv
    remote = get_command_value(argv)
    assert "PJRT_DEVICE=TPU" in remote
    assert "GREETING='hello world'" in remote

    got = json.loads(out_fpath.read_text())
    assert got == {
        "argv": user_args,
        "cwd": str(workdir_dpath),
        "pjrt": "TPU",
        "greeting": "hello world",
    }


def test_xla_dist_propagates_gcloud_exit_code(fake_env: dict[str, str]) -> None:
    result = run_xla_dist(["--tpu", "t", "--", "python", "main.py"], {**fake_env, "FAKE_GCLOUD_RC": "7"})
    assert result.returncode == 7
    assert len(get_gcloud_calls(fake_env)) == 1


def test_xla_dist_missing_gcloud_is_one_line_error(fake_env: dict[str, str], tmp_path: Path) -> None:
    empty_dpath = tmp_path / "empty"
    empty_dpath.mkdir()
    result = run_xla_dist(
        ["--tpu", "t", "--", "python", "main.py"],
        {**fake_env, "PATH": str(empty_dpath)},
    )
    assert result.returncode == 127
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "gcloud" in lines[0] and "install" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tpu", "t", "--env", "NOEQUALS", "--", "python", "main.py"],
            "expected K=V",
        ),
        (
            ["--tpu", "t", "--env", "1BAD=x", "--", "python", "main.py"],
            "invalid environment variable name",
        ),
        (["--tpu", "t"], "missing command"),
        (["--tpu", "t", "--"], "missing command"),
        (["--", "python", "main.py"], "--tpu"),
    ],
)
def test_xla_dist_usage_errors_exit_2(fake_env: dict[str, str], args: list[str], message: str) -> None:
    result = run_xla_dist(args, fake_env)
    assert result.returncode == 2
    assert message in result.stderr
    assert get_gcloud_calls(fake_env) == []


# ---- run_commands.sh -----------------------------------------------------------

SCRIPT_ENV = {
    "TPU_NAME": "my-tpu",
    "ZONE": "us-central2-b",
    "PROJECT": "proj",
    "REPO_URL": "https://example.com/repo.git",
}


def test_run_commands_help_exits_0(fake_env: dict[str, str]) -> None:
    result = run_script(["--help"], fake_env)
    assert result.returncode == 0
    assert "Usage:" in result.stdout and "--step" in result.stdout and "--dry-run" in result.stdout
    assert get_gcloud_calls(fake_env) == []


def test_run_commands_dry_run_prints_all_steps_and_runs_nothing(
    fake_env: dict[str, str],
) -> None:
    result = run_script(["--dry-run", "--", "--name", "a b"], fake_env, **SCRIPT_ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        argv = shlex.split(line)
        assert argv[:7] == [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            "my-tpu",
            "--worker=all",
        ]
        assert argv[7:11] == ["--zone", "us-central2-b", "--project", "proj"]
    clone, venv, launch = (get_command_value(shlex.split(line)) for line in lines)
    assert "git clone --branch main https://example.com/repo.git tpu-train" in clone
    assert "reset --hard origin/main" in clone
    assert "-m venv --clear .venv" in venv
    assert "pip install -r requirements.txt" in venv
    assert "pip install 'torch_xla[tpu]==2.9.0'" in venv
    assert "PJRT_DEVICE=TPU nohup .venv/bin/python main.py --name 'a b' > train.log" in launch
    assert get_gcloud_calls(fake_env) == []


def test_run_commands_dry_run_env_var_and_single_step(fake_env: dict[str, str]) -> None:
    result = run_script(
        ["--step", "launch", "--foreground"],
        fake_env,
        **SCRIPT_ENV,
        DRY_RUN="1",
        RECIPE="train/recipes/r.yaml",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert get_command_value(shlex.split(lines[0])) == "cd tpu-train && PJRT_DEVICE=TPU .venv/bin/python main.py --config train/recipes/r.yaml"
    assert get_gcloud_calls(fake_env) == []


def test_run_commands_calls_gcloud_three_times_on_all_workers(
    fake_env: dict[str, str],
) -> None:
    result = run_script(["--", "--epochs", "1"], fake_env, **SCRIPT_ENV)
    assert result.returncode == 0, result.stderr
    calls = get_gcloud_calls(fake_env)
    assert len(calls) == 3
    for argv in calls:
        assert argv[:6] == [
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            "my-tpu",
            "--worker=all",
        ]
    venv = get_command_value(calls[1])
    assert "torch_xla[tpu]==2.9.0" in venv
    assert shlex.split(venv)[-1] == "torch_xla[tpu]==2.9.0"
    assert "main.py --epochs 1" in get_command_value(calls[2])


def test_run_commands_propagates_gcloud_failure(fake_env: dict[str, str]) -> None:
    result = run_script([], fake_env, **SCRIPT_ENV, FAKE_GCLOUD_RC="5")
    assert result.returncode == 5
    assert len(get_gcloud_calls(fake_env)) == 1  # stops after the failing clone step


@pytest.mark.parametrize(
    ("args", "overrides", "message"),
    [
        (["--dry-run"], {"REPO_URL": "https://x/y.git"}, "TPU_NAME is not set"),
        (["--step", "nope"], SCRIPT_ENV, "--step must be"),
        (["--bogus"], SCRIPT_ENV, "unknown option '--bogus'"),
    ],
)
def test_run_commands_usage_errors(fake_env: dict[str, str], args: list[str], overrides: dict[str, str], message: str) -> None:
    result = run_script(args, fake_env, **overrides)
    assert result.returncode == 2
    assert message in result.stderr
    assert get_gcloud_calls(fake_env) == []


def make_git_repo(repo_dpath: Path, env: dict[str, str]) -> None:
    repo_dpath.mkdir()
    (repo_dpath / "main.py").write_text(FAKE_MAIN)
    (repo_dpath / ".gitignore").write_text(".venv/\n")
    run_git(["init", "-q", "-b", "main"], repo_dpath, env)
    run_git(["add", "."], repo_dpath, env)
    run_git(["commit", "-q", "-m", "init"], repo_dpath, env)


def test_run_commands_clone_and_launch_execute_on_fake_worker(fake_env: dict[str, str], tmp_path: Path) -> None:
    """Clone, update and launch really run through a shell on the fake worker (the venv step needs the network, so it is left out)."""
    git_env = {
        **fake_env,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    origin_dpath = tmp_path / "origin"
    make_git_repo(origin_dpath, git_env)
    checkout_dpath = Path(fake_env["FAKE_GCLOUD_HOME"]) / "tpu-train"
    out_fpath = tmp_path / "main_out.json"
    env = {
        **git_env,
        **SCRIPT_ENV,
        "REPO_URL": str(origin_dpath),
        "FAKE_GCLOUD_EXEC": "1",
        "FAKE_MAIN_OUT": str(out_fpath),
    }

    result = run_script(["--step", "clone"], env)
    assert result.returncode == 0, result.stderr
    assert (checkout_dpath / "main.py").read_text() == FAKE_MAIN

    # Second deploy: a new upstream commit arrives and a local edit on the worker is discarded.
    (origin_dpath / "new.txt").write_text("new\n")
    run_git(["add", "new.txt"], origin_dpath, git_env)
    run_git(["commit", "-q", "-m", "new"], origin_dpath, git_env)
    (checkout_dpath / "main.py").write_text("raise SystemExit('local edit')\n")
    result = run_script(["--step", "clone"], env)
    assert result.returncode == 0, result.stderr
    assert (checkout_dpath / "new.txt").read_text() == "new\n"
    assert (checkout_dpath / "main.py").read_text() == FAKE_MAIN

    # A stand-in venv: only bin/python is used by the launch step.
    (checkout_dpath / ".venv" / "bin").mkdir(parents=True)
    (checkout_dpath / ".venv" / "bin" / "python").symlink_to(sys.executable)
    user_args = ["--name", "has space", "$HOME", "it's"]
    result = run_script(["--step", "launch", "--foreground", "--", *user_args], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(out_fpath.read_text()) == {
        "argv": user_args,
        "cwd": str(checkout_dpath),
        "pjrt": "TPU",
        "greeting": None,
    }

    # Background launch: nohup, pid file, log file; a second launch is refused while the first still runs.
    out_fpath.unlink()
    result = run_script(["--step", "launch", "--", "--sleep", "30"], env)
    assert result.returncode == 0, result.stderr
    pid = int((checkout_dpath / "train.pid").read_text())
    pgid = os.getpgid(pid)  # the fake worker's session: the nohup'ed run and anything it started
    try:
        deadline = time.monotonic() + 30
        while not out_fpath.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(out_fpath.read_text())["argv"] == ["--sleep", "30"]
        assert (checkout_dpath / "train.log").exists()
        result = run_script(["--step", "launch"], env)
        assert result.returncode == 1
        assert "a run is still going" in result.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)


# ---- run_commands.sh: the venv step's interpreter -------------------------------

# A fake interpreter on the fake worker: logs its argv, reports VERSION to `-V` and to `-c` code (sys.version_info and sys.version are patched before the code runs), and `-m venv --clear DIR` writes DIR/bin/python, another fake of the same version. `-m pip` only logs.
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
    """Environment for `--step venv` on a fake Ubuntu 22.04 worker: python3 is 3.10, there is no python3.11 yet, sudo and apt-get are fakes, and PATH holds nothing else but bash, env and hostname."""
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
