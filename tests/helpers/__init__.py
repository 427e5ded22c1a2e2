"""Helpers shared by the test modules (none of them is a test module).

`ROOT` is the repository root: tests and the programs they start in a child process
(`tests/helpers/programs/`) name files and the working directory from it. Importing this package
loads no TensorFlow: programs that check what they import start from it.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
