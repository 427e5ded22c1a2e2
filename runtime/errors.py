"""Errors the runtime reports to the user as one line (main.py turns them into exit code 1)."""

from __future__ import annotations

from utils.errors import UserError


class RunError(UserError, RuntimeError):
    """A run that cannot go on for a reason the user can fix; the message is one line."""


class NonFiniteLossError(RunError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message (at most 300 characters), or its class name, for one-line
    messages."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
