"""The console a user reads: a default run's lines (no duplicates, no third-party noise), and --help of main.py and every tool (every default, fast)."""

import concurrent.futures
import glob
import os
import re
import sys
import time

import pytest

from tests import proc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) (train|datasets|config|engine|utils\.\w+|big_vision\.\w+|tasks\.\w+|cells\.\w+|models\.\w+): ")
NOISE = ("oneDNN", "absl", "tensorflow", "PJRT_DEVICE", "InitializeLog", "Downloading", "downloaded and prepared", "\x1b", "INFO:", "WARNING:", "deprecated")


def _env_without_pjrt() -> dict:
    """A user's shell: no PJRT_DEVICE (the test session sets it), so torch_xla's import would print its 'Defaulting to PJRT_DEVICE=CPU' notice."""
    return {k: v for k, v in os.environ.items() if k not in ("PJRT_DEVICE", "TRAIN_LOG_LEVEL")}


@pytest.mark.timeout(300)
def test_default_run_console_has_no_duplicate_and_no_third_party_line(tmp_path):
    """A default run (fewer steps) on a fresh data dir: every stdout line is ours, each once; stderr is empty; the dataset line tells the truth."""
    argv = ["main.py", "--epochs", "1", "--max_steps_per_epoch", "3", "--log_every", "1", "--output_dir", str(tmp_path / "run")]
    r = proc.run([sys.executable, *argv, "--tfds_data_dir", str(tmp_path / "tfds")], cwd=REPO, env=_env_without_pjrt(), timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert r.stderr == "", r.stderr
    assert all(OUR_LINE.match(line) or line.startswith("final: ") for line in lines), [x for x in lines if not OUR_LINE.match(x)]
    assert not [line for line in lines if any(n in line for n in NOISE)]
    messages = [line[9:] for line in lines]  # without the time
    assert len(messages) == len(set(messages)), [m for m in messages if messages.count(m) > 1]
    assert any("nothing is downloaded" in m for m in messages) and sum("step " in m and "/3  epoch 1/1" in m for m in messages) == 3


@pytest.mark.timeout(120)
def test_torch_xla_import_leaves_one_handler():
    """torch_xla's `logging.basicConfig()` (at import) added a stderr handler: every line was printed twice, the second as INFO:train:... on stderr."""
    code = "import torch_xla; from utils.logging import setup_logging; setup_logging(); import logging; logging.getLogger('train').info('one line')"
    r = proc.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PJRT_DEVICE": "CPU"}, timeout=110)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (r.stdout + r.stderr).count("one line") == 1 and "INFO:train" not in r.stderr, (r.stdout, r.stderr)


def _help_entries(text: str) -> dict[str, str]:
    """`--flag` -> its help entry (the option line and its indented continuation lines)."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)", line)
        if m:
            current = m.group(2)
            entries[current] = line
        elif current and line.startswith(" " * 8):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _run_help(cmd: list[str]) -> tuple[list[str], float, int, str]:
    t0 = time.perf_counter()
    r = proc.run([sys.executable, *cmd, "--help"], cwd=REPO, timeout=60)
    return cmd, time.perf_counter() - t0, r.returncode, r.stdout + r.stderr


def get_tools() -> list[str]:
    """Every module under tools/ that runs as a program."""
    return sorted("tools." + os.path.basename(f)[:-3] for f in glob.glob(os.path.join(REPO, "tools", "*.py")) if 'if __name__ == "__main__":' in open(f).read())


@pytest.mark.timeout(300)
def test_help_of_main_and_every_tool_lists_every_default_in_under_2_s():
    cmds = [["main.py"]] + [["-m", tool] for tool in get_tools()]
    assert len(cmds) > 8, cmds
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run_help, cmds))
    for cmd, seconds, rc, text in results:
        assert rc == 0, (cmd, text[-2000:])
        assert seconds < 2.0, f"{' '.join(cmd)} --help took {seconds:.1f} s"
        entries = _help_entries(text)
        assert len(entries) >= 2, (cmd, text)
        missing = [flag for flag, entry in entries.items() if flag != "--help" and "default" not in entry.lower()]
        assert not missing, f"{' '.join(cmd)} --help shows no default for {missing}"
        twice = [flag for flag, entry in entries.items() if entry.count("(default:") > 1]
        assert not twice, f"{' '.join(cmd)} --help shows the default twice for {twice}"
        dashed = [flag for flag in entries if "-" in flag[2:] and not flag.startswith("--no-")]
        assert not dashed, f"{' '.join(cmd)}: flags with dashes (the style is --snake_case): {dashed}"


def test_bad_flag_of_a_tool_is_two_lines():
    r = proc.run([sys.executable, "-m", "tools.plot_metrics", "x", "--no_such_flag"], cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "usage: python -m tools.plot_metrics [flags] (--help lists them)",
        "python -m tools.plot_metrics: error: unrecognized arguments: --no_such_flag",
    ], r.stderr
