"""Shared by the TPU pod launch tool tests (tests/test_launch_xla_dist.py, tests/test_run_commands.py, tests/test_run_commands_venv.py).

A fake `gcloud` (a small script placed first on PATH) records its argv, one JSON list per line, and optionally runs the `--command` value
with `bash -c` in a fake remote home. Running the command for real checks the shell quoting end to end: what main.py receives must equal
what the user typed.

The remote command runs in its own session, as it would on a worker, so a background launch outlives the local `gcloud` call; SIGTERM to the
fake gcloud (a test timeout) takes the remote session down with it. For the venv step the fake worker's PATH can be replaced by a directory
of fake `python3`, `python3.11`, `sudo` and `apt-get` scripts that log their argv, so the interpreter choice and the apt-get install are
checked without root or network.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # a worker is another machine: what runs there is not this gcloud's descendant for tests/proc.py, so a background launch may outlive the call
    env.pop({tag_env!r}, None)
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


def make_fake_env(tmp_path: Path) -> dict[str, str]:
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


SCRIPT_ENV = {
    "TPU_NAME": "my-tpu",
    "ZONE": "us-central2-b",
    "PROJECT": "proj",
    "REPO_URL": "https://example.com/repo.git",
}
