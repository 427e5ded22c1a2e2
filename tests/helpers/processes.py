"""Command lines and environments for the programs of tests/helpers/programs/, and child
processes started with their output in a log file."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from tests.helpers import ROOT

# A developer's shell or a CI job may hold launcher variables: a child process started by a test
# must not take itself for a rank of a multi-worker job (runtime.distribute.resolve_cluster).
LAUNCHER_PREFIXES = ("TF_CONFIG", "SLURM_", "OMPI_", "PMI_", "MASTER_")


def program(name: str, *args: object) -> list[str]:
    """`python -m tests.helpers.programs.<name> args...` (run it with cwd=ROOT)."""
    return [sys.executable, "-m", f"tests.helpers.programs.{name}", *map(str, args)]


def cpu_env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher variables: no GPU, TensorFlow's C++ INFO and
    WARNING lines off, the repository importable; `extra` set last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT})
    env.update(extra)
    return env


def start_logged(
    command: list[str], log_path, env: dict[str, str], *, own_session: bool = False
) -> subprocess.Popen:
    """Starts `command` in ROOT with its stdout and stderr going to `log_path`; `finish` waits for
    it. `own_session`: in a session of its own (a launcher: `finish` kills all of it)."""
    log = open(log_path, "w")  # noqa: SIM115 - closed by `finish`
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
    )
    proc.log_file = log
    proc.own_session = own_session
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Waits up to `timeout` seconds for a `start_logged` process (killing it, or its session,
    when it runs longer); returns its exit status and its log."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            if proc.own_session:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
        proc.log_file.close()
    with open(proc.log_file.name) as f:
        return proc.returncode, f.read()


def free_ports(count: int) -> list[int]:
    """`count` adjacent free ports of 127.0.0.1, below the ephemeral range (as the default
    MASTER_PORT of scripts/multinode.sh is): an ephemeral port found free here can be taken by
    another socket (srun's, a gRPC client's) before the worker that is to listen on it starts."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    rng = random.Random()
    for _ in range(100):
        first = rng.randrange(12345, ephemeral_low - count)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, s in enumerate(sockets):
                s.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return list(range(first, first + count))
    raise RuntimeError(f"no {count} adjacent free ports below {ephemeral_low}")


def wait_for_text(read: Callable[[], str], text: str, alive: Callable[[], bool], timeout=600):
    """Wait until `read()` (a process's or job's output) contains `text`, while `alive()`."""
    deadline = time.monotonic() + timeout
    while text not in read():
        assert alive(), f"the run ended before {text!r}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.2)
