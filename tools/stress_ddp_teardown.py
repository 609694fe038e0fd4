"""`python -m tools.stress_ddp_teardown --runs 30`: run the 2-process torchrun DDP (gloo) worker of tests/ddp_worker.py again and again and
count the runs that hang at exit.

Each run is `python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.ddp_worker OUT` in a session of its own
(tests/proc.py); a run that passes `--timeout_s` is a hang, and it and every worker it started are killed. Prints one line per run and the
totals; exits 1 if any run hung or failed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from cli.help import ArgumentParser
from tests import proc

REPO_DPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser("python -m tools.stress_ddp_teardown", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30, help="number of torchrun launches")
    p.add_argument("--timeout_s", type=float, default=60.0, help="a run still going after this many seconds is a hang")
    p.add_argument("--nproc", type=int, default=2, help="processes per launch")
    return p.parse_args(argv)


def get_report(stdout: str | None, stderr: str | None) -> str:
    """The error lines of a run (a worker's traceback ends above torchrun's own), then the tail of its output."""
    text = (stdout or "") + (stderr or "")
    errors = [line for line in text.splitlines() if "Error" in line and not line.startswith(" ")]
    return "\n".join(errors[:10] + ["..."] + text.splitlines()[-20:])


def run_once(out_fpath: str, nproc: int, timeout_s: float) -> tuple[str, float, str]:
    """One launch: ("ok" | "hang" | "fail", seconds, what it printed that explains a hang or failure)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "tests.ddp_worker", out_fpath]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PJRT_DEVICE": "CPU"}
    t0 = time.monotonic()
    try:
        r = proc.run(cmd, timeout=timeout_s, cwd=REPO_DPATH, env=env)
    except subprocess.TimeoutExpired as e:
        return "hang", time.monotonic() - t0, get_report(e.stdout, e.stderr)
    seconds = time.monotonic() - t0
    if r.returncode != 0 or not os.path.exists(out_fpath):
        return "fail", seconds, f"exit code {r.returncode}\n{get_report(r.stdout, r.stderr)}"
    return "ok", seconds, ""


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    counts = {"ok": 0, "hang": 0, "fail": 0}
    seconds = []
    with tempfile.TemporaryDirectory() as dpath:
        for i in range(args.runs):
            out_fpath = os.path.join(dpath, f"run{i}.pt")
            outcome, s, tail = run_once(out_fpath, args.nproc, args.timeout_s)
            counts[outcome] += 1
            seconds.append(s)
            print(f"run {i + 1}/{args.runs}: {outcome} in {s:.1f} s", flush=True)
            if outcome != "ok":
                print(tail, flush=True)
    print(f"runs {args.runs}, ok {counts['ok']}, hangs {counts['hang']}, failures {counts['fail']}")
    print("seconds per run: " + " ".join(f"{s:.1f}" for s in seconds))
    print(f"seconds per run: min {min(seconds):.1f}, median {sorted(seconds)[len(seconds) // 2]:.1f}, max {max(seconds):.1f}")
    return 1 if counts["hang"] or counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
