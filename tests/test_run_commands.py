"""`run_commands.sh` (clone, venv and launch on every TPU worker) against a fake `gcloud` (see tests/launch_helpers.py)."""

import contextlib
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.launch_helpers import FAKE_MAIN, SCRIPT_ENV, get_command_value, get_gcloud_calls, make_fake_env, run_git, run_script


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """Environment with a fake gcloud first on PATH and an empty fake remote home."""
    return make_fake_env(tmp_path)


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

    check_background_launch(env, checkout_dpath, out_fpath)


def check_background_launch(env: dict[str, str], checkout_dpath: Path, out_fpath: Path) -> None:
    """Background launch: nohup, pid file, log file; a second launch is refused while the first still runs."""
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
