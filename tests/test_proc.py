"""tests/proc.py: a child that times out, fails or leaves processes behind takes everything it started with it, grandchildren in other
sessions (as torchrun starts its workers) included.
"""

import os
import subprocess
import sys
import time

import pytest

from tests import proc

# A child that starts two sleeping grandchildren, one in its own process group and one in a session of its own, prints all three pids, then
# sleeps itself (or exits at once with "exit").
PARENT = """
import os, subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
same = subprocess.Popen(sleep)
own = subprocess.Popen(sleep, start_new_session=True)
print(os.getpid(), same.pid, own.pid, flush=True)
if sys.argv[1] == "sleep":
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    return any(p.pid == pid for p in proc.list_live())


def _pids(text: str) -> list[int]:
    pids = [int(x) for x in text.split()[:3]]
    assert len(pids) == 3, text
    return pids


def test_timeout_kills_the_child_and_its_grandchildren_in_any_session():
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        proc.run([sys.executable, "-c", PARENT, "sleep"], timeout=2)
    pids = _pids(info.value.stdout)
    assert not [pid for pid in pids if _alive(pid)], pids
    assert time.monotonic() - t0 < 5
    assert "everything it started was killed" in str(info.value) and str(pids[0]) in str(info.value), "the message shows the output"


def test_grandchildren_left_behind_by_a_finished_child_are_killed():
    r = proc.run([sys.executable, "-c", PARENT, "exit"], timeout=30)
    assert r.returncode == 0, r.stderr
    pids = _pids(r.stdout)
    assert not [pid for pid in pids if _alive(pid)], pids


def test_popen_kills_everything_when_the_block_raises():
    with pytest.raises(RuntimeError, match="test body failed"), proc.Popen([sys.executable, "-c", PARENT, "sleep"], stdout=subprocess.PIPE, text=True) as child:
        pids = _pids(child.stdout.readline())
        assert all(_alive(pid) for pid in pids)
        raise RuntimeError("test body failed")
    assert not [pid for pid in pids if _alive(pid)], pids
    assert child.returncode == -15, "SIGTERM first"


def test_children_carry_the_session_tag_even_with_their_own_env():
    r = proc.run([sys.executable, "-c", f"import os; print(os.environ.get({proc.SESSION_ENV!r}), os.environ.get('ONLY'))"], timeout=30, env={"ONLY": "1"})
    assert r.stdout.split() == [os.environ[proc.SESSION_ENV], "1"]
