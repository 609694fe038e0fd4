"""Run one command on every worker of a TPU VM (pod slice) through `gcloud ... ssh --worker=all`.

Why this exists: `python -m torch_xla.distributed.xla_dist` was removed together with XRT in torch_xla 2.1, but its command shape
(`--tpu NAME -- python main.py ...`) is what many people know. With PJRT a launcher no longer has to hand out ranks or a master address: the
runtime discovers topology, ranks and the coordinator by itself as long as the same command starts on every worker. So all that is left is
`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` with the working directory, environment and quoting done right, which is
what this module builds.

Example:
    python -m train.xla_dist --tpu my-v4-32 --zone us-central2-b --workdir tpu-train --env XLA_FLAGS=--xla_dump_to=/tmp/dump \\
        -- .venv/bin/python main.py --config train/recipes/x.yaml

The remote command is `cd WORKDIR && K=V ... PJRT_DEVICE=TPU <command>`, every piece shell-quoted, so an argument with spaces or `$` reaches
main.py unchanged. `PJRT_DEVICE=TPU` is added unless `--env PJRT_DEVICE=...` overrides it. A relative WORKDIR is relative to the remote home
directory.
"""

import argparse
import re
import shlex
import shutil
import subprocess
import sys

_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env(item: str) -> tuple[str, str]:
    """Parse one `--env K=V` value; argparse turns the ArgumentTypeError into exit 2."""
    key, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected K=V, got {item!r} (no '=')")
    if not _ENV_KEY_RE.fullmatch(key):
        raise argparse.ArgumentTypeError(f"invalid environment variable name {key!r} in {item!r}")
    return key, value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.xla_dist",
        usage="%(prog)s --tpu NAME [--zone Z] [--project P] [--env K=V ...] [--workdir DIR] [--dry-run] -- COMMAND ...",
        description=(
            "Run COMMAND on every worker of a TPU VM via `gcloud compute tpus tpu-vm ssh --worker=all`"
            " (replacement for the removed torch_xla.distributed.xla_dist)."
        ),
    )
    parser.add_argument(
        "--tpu",
        required=True,
        help="TPU VM name (as in `gcloud compute tpus tpu-vm list`)",
    )
    parser.add_argument(
        "--zone",
        default=None,
        help="TPU zone; default: gcloud's configured compute/zone",
    )
    parser.add_argument(
        "--project",
        default=None,
        help="GCP project; default: gcloud's configured project",
    )
    parser.add_argument(
        "--env",
        type=parse_env,
        action="append",
        default=[],
        metavar="K=V",
        help="environment variable for the remote command (repeatable)",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="directory to cd into on every worker before running COMMAND (relative paths are relative to the remote home)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the gcloud command line and exit without running it",
    )
    return parser


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: launcher options before it, the remote command after it."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def get_workdir_shell(workdir: str) -> str:
    """Quote a directory for the remote shell, keeping a leading `~/` unquoted so the remote shell still expands it."""
    if workdir == "~":
        return "~"
    if workdir.startswith("~/"):
        return "~/" + shlex.quote(workdir[2:])
    return shlex.quote(workdir)


def get_remote_command(command: list[str], env: list[tuple[str, str]], workdir: str | None) -> str:
    """Build `cd WORKDIR && K=V ... PJRT_DEVICE=TPU COMMAND` for the remote shell."""
    assert command, "command must not be empty"
    env_d = dict(env)  # a later --env K=... wins, as it would in a shell
    env_d.setdefault("PJRT_DEVICE", "TPU")
    parts = [f"{key}={shlex.quote(value)}" for key, value in env_d.items()]
    parts.append(shlex.join(command))
    remote = " ".join(parts)
    if workdir is None:
        return remote
    return f"cd {get_workdir_shell(workdir)} && {remote}"


def get_gcloud_argv(tpu: str, zone: str | None, project: str | None, remote_command: str) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--worker=all"]
    if zone:
        argv.append(f"--zone={zone}")
    if project:
        argv.append(f"--project={project}")
    argv.append(f"--command={remote_command}")
    return argv


def main(argv: list[str] | None = None) -> int:
    """Parse, build the gcloud command, then print it (--dry-run) or run it and return its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    own_argv, command = split_argv(argv)
    parser = make_parser()
    args = parser.parse_args(own_argv)
    if not command:
        parser.error("missing command: put the command to run on every worker after '--', e.g. -- python main.py --config recipe.yaml")

    remote_command = get_remote_command(command, args.env, args.workdir)
    gcloud_argv = get_gcloud_argv(args.tpu, args.zone, args.project, remote_command)
    if args.dry_run:
        print(shlex.join(gcloud_argv))
        return 0

    if shutil.which("gcloud") is None:
        print(
            "error: `gcloud` not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install),"
            " run `gcloud auth login`, or use --dry-run to print the command",
            file=sys.stderr,
        )
        return 127
    try:
        returncode = subprocess.run(gcloud_argv, check=False).returncode
    except KeyboardInterrupt:
        # gcloud got the same SIGINT; the remote processes may still run (stop them with another --worker=all ssh).
        return 130
    # A child killed by signal N reports -N; shells report 128+N, which keeps the exit code in 0..255.
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main())
