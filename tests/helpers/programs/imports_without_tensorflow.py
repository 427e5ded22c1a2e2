"""Import each MODULE and exit 1 if that loaded TensorFlow or Keras. Run by tests/test_main.py
(runtime.flags: a typo on the command line must fail at once), tests/runtime/test_cluster.py
(runtime.cluster: main.py and runtime.lock ask "am I the chief?" before TensorFlow starts) and
tests/model/test_schema.py (model, model.schema and config.loader validate without Keras).

    python -m tests.helpers.programs.imports_without_tensorflow MODULE...
"""

import importlib
import sys

for module in sys.argv[1:]:
    importlib.import_module(module)
sys.exit(any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules))
