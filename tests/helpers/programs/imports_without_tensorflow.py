"""Import MODULE and exit 1 if that loaded TensorFlow or Keras; run by tests/test_main.py
(runtime.flags: a typo on the command line must fail at once) and tests/runtime/test_distribute.py
(runtime.cluster: main.py and runtime.lock ask "am I the chief?" before TensorFlow starts).

    python -m tests.helpers.programs.imports_without_tensorflow MODULE
"""

import importlib
import sys

importlib.import_module(sys.argv[1])
sys.exit(any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules))
