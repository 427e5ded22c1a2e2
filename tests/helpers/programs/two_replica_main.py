"""main.py in one process with two logical CPU replicas (create_strategy(cpu_replicas=2)): the
single-process reference of tests/runtime/test_distribute_multiworker.py.

    python -m tests.helpers.programs.two_replica_main MAIN_PY_ARGS...
"""

import sys

from runtime import distribute

_create = distribute.create_strategy
distribute.create_strategy = lambda *a, **k: _create(*a, **{**k, "cpu_replicas": 2})

import main  # noqa: E402 (after the patch, as main.py would import it)

sys.exit(main.main(sys.argv[1:]))
