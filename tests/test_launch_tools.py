"""Tests for the TPU pod launch tools: `python -m train.xla_dist` and `run_commands.sh`.

A fake `gcloud` (a small script placed first on PATH) records its argv, one JSON list per line, and optionally runs the `--command` value with `bash -c` in a fake remote home. Running the command for real checks the shell quoting end to end: what main.py receives must equal what the user typed.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_DPATH = Path(__file__).resolve().parent.parent
RUN_COMMANDS_FPATH = REPO_DPATH / "run_commands.sh"

FAKE_GCLOUD = """#!{python}
import json, os, subprocess, sys

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
    sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["FAKE_GCLOUD_HOME"]).returncode)
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
    gcloud_fpath.write_text(FAKE_GCLOUD.format(python=sys.executable))
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
    return subprocess.run(
        [sys.executable, "-m", "train.xla_dist", *args],
        check=False,
        cwd=REPO_DPATH,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_script(args: list[str], env: dict[str, str], **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(RUN_COMMANDS_FPATH), *args],
        check=False,
        cwd=REPO_DPATH,
        env={**env, **overrides},
        capture_output=True,
        text=True,
        timeout=60,
    )


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
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo_dpath, env=env, check=True)
    subprocess.run(["git", "add", "."], cwd=repo_dpath, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=repo_dpath, env=env, check=True)


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
    subprocess.run(["git", "add", "new.txt"], cwd=origin_dpath, env=git_env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "new"], cwd=origin_dpath, env=git_env, check=True)
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
        os.kill(pid, signal.SIGTERM)
