"""Run scripts/export_digits.py with the given arguments; exit 3 if it loaded TensorFlow (it
must not); run by tests/scripts/test_export_digits.py.

    python -m tests.helpers.programs.export_digits_without_tensorflow ARGS...
"""

import os
import runpy
import sys

from tests.helpers import ROOT

sys.argv = ["export_digits.py", *sys.argv[1:]]
try:
    runpy.run_path(os.path.join(ROOT, "scripts", "export_digits.py"), run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
sys.exit(3 if any(m.split(".")[0] == "tensorflow" for m in sys.modules) else 0)
