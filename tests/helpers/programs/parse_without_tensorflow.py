"""Parse a main.py command line with runtime.flags.parse and exit 3 if that loaded TensorFlow or
Keras, else with parse's own status (2: bad input, printed as one line; 0: it passed). Run by
tests/test_main.py: checks made before anything is written must not wait for TensorFlow.

    python -m tests.helpers.programs.parse_without_tensorflow MAIN_ARGS...
"""

import sys

from runtime import flags

try:
    flags.parse(sys.argv[1:])
    status = 0
except SystemExit as exc:
    status = exc.code
sys.exit(3 if any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules) else status)
