"""Import runtime.flags and exit 1 if that loaded TensorFlow or Keras (a typo on the command line
must fail at once); run by tests/test_main.py.

    python -m tests.helpers.programs.flags_without_tensorflow
"""

import sys

import runtime.flags  # noqa: F401 (the import is the check)

sys.exit(any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules))
