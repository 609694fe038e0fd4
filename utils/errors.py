"""Errors the user fixes, and the phase that decides what an exception means.

The CLI (`main.cli`, through `get_exit_code` and `report`) maps exceptions to exit codes by type, never by where in the code they were raised:

- `UserError` and its subclasses carry their own exit code and a one-line message that names the bad value and the fix. They may be raised at any point: a
  corrupt record found mid-epoch is still bad input, a full disk at checkpoint time is still an output problem.
- Inside `startup()` (flags, paths, data, model, optimizer, resume: everything before the first train step) the checks of every component raise plain
  `ValueError` / `FileNotFoundError` (and the set-up errors listed in `STARTUP_TYPES`); `startup()` turns them into `BadInputError`. The same types raised once
  training runs are bugs and keep their traceback.
"""

import contextlib
from collections.abc import Iterator

EXIT_BAD_INPUT = 2  # argparse's code for usage errors too
EXIT_DIVERGED = 3
EXIT_OUTPUT_WRITE = 4


class UserError(Exception):
    """Something the user fixes (input, environment): the CLI prints `error: <message>` and exits `exit_code`, without a traceback."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(UserError, ValueError):
    """A flag, file or dataset that cannot work as given (exit 2)."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or gradient norm became nan or inf (exit 3); the last good checkpoint is kept."""

    exit_code = EXIT_DIVERGED


class OutputWriteError(UserError, OSError):
    """Writing to --output_dir failed (disk full, read-only, permissions, a bucket gone): exit 4; earlier checkpoints are intact."""

    exit_code = EXIT_OUTPUT_WRITE


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first message line, cut at `limit` characters, for a one-line `error:` message (torch and TF messages run to many lines)."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _startup_types() -> tuple[type[BaseException], ...]:
    from utils.device import DeviceUnavailableError
    from utils.import_order import ImportOrderError

    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportOrderError, DeviceUnavailableError)


@contextlib.contextmanager
def startup() -> Iterator[None]:
    """The start-up phase: every check raises a plain ValueError-style error with its one-line message; here it becomes a `BadInputError` (exit 2)."""
    try:
        yield
    except UserError:
        raise
    except _startup_types() as e:
        raise BadInputError(str(e)) from e


def get_exit_code(e: BaseException) -> int | None:
    """The exit code of an expected way to stop; None for a bug, which keeps its traceback.

    Decided by type alone: a `UserError` (every start-up check, turned into one by `startup`; bad data, divergence and failed writes found while training)
    carries its code, and so does a stop signal (`utils.preemption.TrainingStopped`: 128 + the signal number). Any other exception is a bug, wherever it was
    raised.
    """
    from utils.preemption import TrainingStopped

    if isinstance(e, TrainingStopped | UserError):
        return e.exit_code
    return None


def report(e: BaseException, argv: list[str]) -> int | None:
    """Print the one `error:` (or `stopped:`, with the command that resumes) line of an expected stop on stderr and return its exit code; None for a bug."""
    import sys

    from utils.preemption import TrainingStopped, get_resume_command

    code = get_exit_code(e)
    if code is None:
        return None
    if isinstance(e, TrainingStopped):
        print(f"stopped: {e}\n  {get_resume_command(argv, e.output_dpath)}", file=sys.stderr)
    else:
        print(f"error: {e}", file=sys.stderr)
    return code
