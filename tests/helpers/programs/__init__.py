"""Programs the tests run in another Python process, as `python -m tests.helpers.programs.NAME`.

A check runs in a child process when the pytest process cannot host it: the Keras backend or
TensorFlow's logical devices are fixed when they first load, a SIGKILL must not end the test
run, or the check is about what an import loads. Each module says who starts it and with which
arguments; `tests.helpers.processes` starts them.
"""
