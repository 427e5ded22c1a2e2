"""Start runtime.watchdog on this process with a 0.5 s limit, then sleep 60 s and print NOT
KILLED; tests/runtime/test_watchdog.py checks that the watchdog killed it first, after its
one line on stderr.

    python -m tests.helpers.programs.watched_sleeper
"""

import os
import subprocess
import sys
import time

from tests.helpers import ROOT

subprocess.Popen(
    [sys.executable, "-m", "runtime.watchdog", str(os.getpid()), "0.5", "main.py: error: too slow"],
    cwd=ROOT,
)
time.sleep(60)
print("NOT KILLED")
