"""Kill this process (SIGKILL) in the middle of utils.fileio.atomic_write; run by
tests/utils/test_fileio.py, which checks the old file is intact and the temporary is stale.

    python -m tests.helpers.programs.killed_atomic_write PATH
"""

from __future__ import annotations

import os
import signal
import sys

from utils.fileio import atomic_write


def main(path: str) -> None:
    with atomic_write(path, "wb") as f:
        f.write(b"half")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
