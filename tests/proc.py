"""Subprocesses for tests (and stress tools) that never outlive their caller: each child runs in its own process group (session), and
everything it started is killed on timeout, on failure to finish, or when the calling process itself is interrupted.

`run` is `subprocess.run` with that guarantee; `Popen` is a context manager for tests that signal a running child. The process group alone
is not enough: torchrun starts every worker in a session of its own (`start_new_session=True` in torch.distributed.elastic), and a worker
whose launcher died is reparented to init. So every child gets a tag in its environment (`TESTS_PROC_TAG`), which its descendants inherit,
and a kill reaches the child's group and every live process that carries the tag, wherever it sits in the process tree.

Zombies do not count as alive: PID 1 of a container or a micro-VM often never reaps orphans, and a zombie holds no resources that matter to a test.
"""

import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

KILL_GRACE_S = 5.0  # after SIGTERM, SIGKILL whatever is left; after SIGKILL, give up waiting
POLL_S = 0.05
LINGER_S = 2.0  # a child that exited while processes it started still hold its output pipes: how long they get before they are killed
TAG_ENV = "TESTS_PROC_TAG"  # one value per child started here, inherited by everything it starts
SESSION_ENV = "TESTS_SESSION_TAG"  # one value per pytest session (tests/conftest.py), passed on even when a caller gives its own `env`

_counter = itertools.count()


@dataclasses.dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str


def list_live() -> list[ProcInfo]:
    """Every process on this machine that is not a zombie (from /proc; processes that vanish while being read are skipped)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fd:
                stat = fd.read()
            with open(f"/proc/{name}/cmdline", "rb") as fd:
                cmdline = fd.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # the command name in parentheses may hold spaces
        state = fields[0].decode()
        if state in ("Z", "X"):
            continue
        out.append(ProcInfo(pid=int(name), ppid=int(fields[1]), pgid=int(fields[2]), state=state, cmdline=cmdline))
    return out


def has_env(pid: int, key: str, value: str) -> bool:
    """True if process `pid` was started with `key=value` in its environment (False for processes of other users or ones that are gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fd:
            data = fd.read()
    except OSError:
        return False
    return f"{key}={value}".encode() in data.split(b"\0")


class TimedOut(subprocess.TimeoutExpired):
    """`subprocess.TimeoutExpired` whose message ends with the last output of the killed process, so a test failure shows where it hung."""

    def __str__(self) -> str:
        text = "".join(x if isinstance(x, str) else x.decode(errors="replace") for x in (self.stdout, self.stderr) if x)
        return f"{super().__str__()} (everything it started was killed); the end of its output:\n{text[-3000:]}"


class _TaggedPopen(subprocess.Popen):
    """A Popen in a new session whose environment carries a fresh `TESTS_PROC_TAG`."""

    def __init__(self, cmd: list[str], **kwargs):
        self.tag = f"{os.getpid()}.{next(_counter)}.{uuid.uuid4().hex[:8]}"
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        env[TAG_ENV] = self.tag
        if SESSION_ENV in os.environ:
            env[SESSION_ENV] = os.environ[SESSION_ENV]
        kwargs["env"] = env
        super().__init__(cmd, start_new_session=True, **kwargs)


def members(proc: _TaggedPopen) -> list[int]:
    """Live pids of the child's process group and of every process that carries the child's tag (the child's descendants in other sessions)."""
    return [p.pid for p in list_live() if p.pgid == proc.pid or has_env(p.pid, TAG_ENV, proc.tag)]


def kill_group(proc: _TaggedPopen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the child's group and tagged descendants, SIGKILL what is left after `grace_s`, and reap the child; a no-op once all of it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = members(proc)
        if not pids:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the child itself, or it stays a (harmless but confusing) zombie
            if not members(proc):
                break
            time.sleep(POLL_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def run(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, ...)` in a new session; on timeout everything it started is killed and `TimedOut` (a
    `subprocess.TimeoutExpired`) raised with all the output it wrote. Text output captured by default.
    """
    if kwargs.pop("capture_output", True):
        if "stdout" in kwargs or "stderr" in kwargs:
            raise ValueError("stdout and stderr arguments may not be used with capture_output (pass capture_output=False)")
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    kwargs.setdefault("text", True)
    proc = _TaggedPopen(cmd, **kwargs)
    try:
        try:
            out, err = _communicate(proc, timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = _drain(proc)
            raise TimedOut(proc.args, timeout, output=out, stderr=err) from None
        except BaseException:  # KeyboardInterrupt, pytest-timeout's Failed: nothing may survive the test
            kill_group(proc)
            _drain(proc)
            raise
    finally:
        # The child exited; what it left behind (a torchrun worker stuck at exit) dies now.
        kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _communicate(proc: _TaggedPopen, timeout: float) -> tuple[str | bytes | None, str | bytes | None]:
    """`proc.communicate(timeout=timeout)`, except that once the child has exited, processes it left holding its pipes get `LINGER_S` to
    finish and are then killed: the run is over when the child is.
    """
    deadline = time.monotonic() + timeout
    exited_at = None
    while True:
        now = time.monotonic()
        try:
            return proc.communicate(timeout=max(0.0, min(deadline - now, LINGER_S / 4)))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        if proc.poll() is None:
            continue
        exited_at = exited_at or time.monotonic()
        if time.monotonic() - exited_at >= LINGER_S:
            kill_group(proc)
            return _drain(proc)


def _drain(proc: _TaggedPopen) -> tuple[str | bytes | None, str | bytes | None]:
    """The rest of a killed child's output; bounded, in case something outside its tree still holds a pipe."""
    try:
        return proc.communicate(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        empty = "" if proc.text_mode else b""
        return (empty if proc.stdout else None), (empty if proc.stderr else None)


@contextlib.contextmanager
def Popen(cmd: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """`subprocess.Popen` in a new session, the child and everything it started killed when the `with` block ends however it ends."""
    proc = _TaggedPopen(cmd, **kwargs)
    try:
        yield proc
    finally:
        kill_group(proc)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
