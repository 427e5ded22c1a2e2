"""runtime/watchdog.py: the kill timer of a multi-worker start-up."""

import os
import subprocess
import time

from runtime import watchdog
from tests.helpers import ROOT
from tests.helpers.processes import program


def test_watchdog_kills_its_parent_with_one_line_and_leaves_when_the_parent_is_gone(
    capsys, monkeypatch
):
    started = time.monotonic()
    result = subprocess.run(
        program("watched_sleeper"), cwd=ROOT, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == -9 and result.stdout == ""
    assert result.stderr == "main.py: error: too slow\n"
    assert time.monotonic() - started < 30
    # The watched process is no longer its parent (it ended): it returns at once, silently.
    kills = []
    monkeypatch.setattr(os, "kill", lambda *args: kills.append(args))
    started = time.monotonic()
    watchdog.watch(os.getpid(), 60.0, "never written")
    assert time.monotonic() - started < 5
    assert kills == [] and capsys.readouterr().err == ""
