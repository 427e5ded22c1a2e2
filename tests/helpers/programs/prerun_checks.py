"""main.py's checks before a run (flags, data settings, the model_dir lock, the resume check),
then whether they started TensorFlow's runtime. Run by tests/runtime/test_lock.py as the chief
of a 2-worker TF_CONFIG: a MultiWorkerMirroredStrategy must be created before the runtime starts.

    python -m tests.helpers.programs.prerun_checks ARGV_LISTS_JSON

Prints one JSON object as the last line: {"<--model_dir name>": runtime started after its checks}.
"""

import json
import os
import sys

import main
from runtime import compat, flags

started = {}
for argv in json.loads(sys.argv[1]):
    params = flags.parse(argv)
    main.check_and_claim(params).release()
    started[os.path.basename(params["model_dir"])] = compat.runtime_started()
print(json.dumps(started))
