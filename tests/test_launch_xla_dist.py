"""`python -m train.xla_dist` against a fake `gcloud` (see tests/launch_helpers.py)."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from tests.launch_helpers import FAKE_MAIN, get_command_value, get_gcloud_calls, make_fake_env, run_xla_dist


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """Environment with a fake gcloud first on PATH and an empty fake remote home."""
    return make_fake_env(tmp_path)


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
