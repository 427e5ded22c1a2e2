"""Errors the runtime reports to the user as one line (main.py turns them into exit code 1)."""

from __future__ import annotations

from utils.errors import UserError


class RunError(UserError, RuntimeError):
    """A run that cannot go on for a reason the user can fix; the message is one line."""


class NonFiniteLossError(RunError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""
