"""Digits KD experiment: train the teacher, then the student with and without soft KD over several seeds; print student top-1 both ways.

    python -m tools.run_kd_experiment [--teacher_path output/kd_teacher/checkpoint-XXXX.pt] [--seeds 0 1 2] [any main.py flags, e.g. --tfds_data_dir DIR]

Recipes: train/recipes/kd_digits_teacher.yaml, kd_digits_student_baseline.yaml and kd_digits_student.yaml (the same student
recipe plus the KD flags). Every run is a fresh `python main.py` process; unknown flags go to all of them. Each run writes
to its own directory under --output_root, which this script empties first (it owns those directories).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from cli.help import ArgumentParser

REPO_DPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES_DPATH = os.path.join(REPO_DPATH, "train", "recipes")
TEACHER_RECIPE = os.path.join(RECIPES_DPATH, "kd_digits_teacher.yaml")
BASELINE_RECIPE = os.path.join(RECIPES_DPATH, "kd_digits_student_baseline.yaml")
KD_RECIPE = os.path.join(RECIPES_DPATH, "kd_digits_student.yaml")


def run_main(config_fpath: str, output_dpath: str, extra: list[str]) -> dict[str, float]:
    """One `main.py` run from scratch; returns its last eval metrics (from output_dir/metrics.jsonl)."""
    shutil.rmtree(output_dpath, ignore_errors=True)
    cmd = [sys.executable, os.path.join(REPO_DPATH, "main.py"), "--config", config_fpath, "--output_dir", output_dpath, *extra]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_DPATH, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(output_dpath, "metrics.jsonl")) as fd:
        evals = [r for r in map(json.loads, fd) if "eval/acc1" in r]
    assert evals, f"{output_dpath}/metrics.jsonl has no eval/acc1"
    metrics = {k.removeprefix("eval/"): v for k, v in evals[-1].items()}
    print(f"  acc1 {metrics['acc1']:.2f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    return metrics


def get_summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):6.2f} +- {spread:4.2f}  (min {min(values):.2f}, max {max(values):.2f}; " + ", ".join(f"{v:.2f}" for v in values) + ")"


def main() -> None:
    p = ArgumentParser("python -m tools.run_kd_experiment", description=__doc__)
    p.add_argument("--teacher_path", default=None, help="reuse this teacher checkpoint instead of training one")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output_root", default=os.path.join(REPO_DPATH, "output", "kd_experiment"))
    args, extra = p.parse_known_args()
    from utils import checkpoint as ckpt

    teacher_acc = None
    teacher_fpath = args.teacher_path
    if teacher_fpath is None:
        teacher_dpath = os.path.join(args.output_root, "teacher")
        teacher_acc = run_main(TEACHER_RECIPE, teacher_dpath, extra)["acc1"]
        found = ckpt.list_checkpoints(teacher_dpath)
        assert found, f"the teacher run wrote no checkpoint in {teacher_dpath}"
        teacher_fpath = found[0][1]
    elif not os.path.isfile(teacher_fpath):
        raise FileNotFoundError(f"--teacher_path {teacher_fpath!r} does not exist")

    results: dict[str, list[float]] = {"student": [], "student + soft KD": []}
    for seed in args.seeds:
        seed_flags = ["--seed", str(seed)]
        results["student"].append(run_main(BASELINE_RECIPE, os.path.join(args.output_root, f"student_s{seed}"), [*extra, *seed_flags])["acc1"])
        kd_flags = ["--teacher_path", teacher_fpath, *seed_flags]
        results["student + soft KD"].append(run_main(KD_RECIPE, os.path.join(args.output_root, f"student_kd_s{seed}"), [*extra, *kd_flags])["acc1"])

    print(f"\nteacher: {teacher_fpath}" + (f"  top-1 {teacher_acc:.2f}" if teacher_acc is not None else ""))
    print(f"student top-1 on the digits test split (360 images), {len(args.seeds)} seeds, mean +- sample std:")
    for name, values in results.items():
        print(f"  {name:<18} {get_summary(values)}")
    delta = statistics.mean(results["student + soft KD"]) - statistics.mean(results["student"])
    print(f"  KD - baseline: {delta:+.2f} points")


if __name__ == "__main__":
    main()
