"""A kill timer in its own process: `python -m runtime.watchdog PARENT_PID SECONDS MESSAGE`.

Owns the small process runtime.distribute starts while MultiWorkerMirroredStrategy waits for
every worker to join (`_startup_watchdog` there says why it must be a process). It imports
only the standard library, so it starts in a fraction of a second: when the parent is still
alive after SECONDS it writes MESSAGE (one line) to stderr and sends the parent SIGKILL; it
exits quietly as soon as the parent is gone (killed, or finished with its own timer).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence


def watch(parent: int, seconds: float, message: str) -> None:
    """Kill `parent` with `message` on stderr unless it goes away within `seconds`.

    Args:
      parent: process id of the process to kill (this process's parent).
      seconds: how long it may live.
      message: the line written to stderr before the kill.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            return
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)


def main(argv: Sequence[str]) -> None:
    """Command line: PARENT_PID SECONDS MESSAGE."""
    parent, seconds, message = argv
    watch(int(parent), float(seconds), message)


if __name__ == "__main__":
    main(sys.argv[1:])
