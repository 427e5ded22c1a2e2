"""The user errors: one base class for every error the user can fix, carrying its exit status.

An error the user can fix (a bad flag, config, path or data set; a run stopped by a NaN loss)
is raised as a subclass of `UserError` with a one-line message; main.py catches `UserError`
once, prints `main.py: error: <message>` and exits with the error's `exit_code`:

- `BAD_INPUT` (2): bad input found before anything runs or is written. Every user error raised
  inside `before_run()` gets this status, whatever its class.
- `RUN_FAILED` (1): a run that failed for a reason the user can fix (the default).
- `RESUMABLE` (75, EX_TEMPFAIL of sysexits.h): training stopped on a signal after writing a
  checkpoint; running the same command again resumes (runtime/preemption.py). The SLURM jobs
  requeue themselves on it (scripts/slurm_requeue.sh).

A subclass that callers also catch as a ValueError / OSError / RuntimeError / ImportError keeps
that class as its second base. This module imports nothing of the project (and no
TensorFlow), so every package may import it; `ConfigError` lives here because both config/ and
model/ raise it and model/ never imports config/.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

BAD_INPUT = 2
RUN_FAILED = 1
RESUMABLE = 75


class UserError(Exception):
    """An error the user can fix; the message is one line saying what to change.

    Attributes:
      exit_code: the process exit status when this error ends the application.
      heading: what main.py writes before the message (`main.py: error: <message>`).
    """

    exit_code: int = RUN_FAILED
    heading: str = "error: "


class ConfigError(UserError, ValueError):
    """A config file, key or value that cannot be used; the message is one line."""


@contextlib.contextmanager
def before_run() -> Iterator[None]:
    """Mark the user errors raised inside as bad input found before anything runs (exit 2).

    One class can mean either: a DataError from the data settings checked before the run is
    bad input (2); a DataError from a data folder found empty once training started is a failed
    run (1).
    """
    try:
        yield
    except UserError as err:
        err.exit_code = BAD_INPUT
        raise
