"""The model_dir lock: one training run per `model_dir` at a time.

Two runs training into one folder would overwrite each other's checkpoints while params.json
describes only one of them. The training process (in a multi-worker job: the chief) creates
`model_dir/train.lock`, a small JSON file with its pid, host and start time, before it writes
anything else there, and removes it when it ends. A second training run finds the file and
exits with status 2, naming the holder. A lock left by a process that died (SIGKILL, power
loss) on this host is taken over with a warning; one from another host cannot be checked and
must be deleted by hand (the message says which file). Eval, predict and the benchmarks only
read the folder and take no lock.

The lock is advisory (like a pid file): it guards against mistakes, not against a process that
ignores it. It is created complete in one step (`os.link` of a fully written temporary file),
so a reader never sees a half-written lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

from utils.errors import BAD_INPUT, UserError
from utils.fileio import atomic_write_text, host_name, pid_alive, temp_path

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


class LockError(UserError, RuntimeError):
    """model_dir is locked by another training run; the message is one line."""

    exit_code = BAD_INPUT


def lock_path(model_dir: str) -> str:
    """The lock file of `model_dir`."""
    return os.path.join(model_dir, LOCK_FILE)


def read_lock(model_dir: str) -> dict[str, Any] | None:
    """The holder recorded in `model_dir`'s lock ({"pid", "host", "started"}), or None."""
    try:
        with open(lock_path(model_dir), encoding="utf-8") as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    since = (
        time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, int | float)
        else ""
    )
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


class ModelDirLock:
    """The lock of one `model_dir`; `acquire` raises LockError when another run holds it.

    Usable as a context manager (acquire on enter, release on exit).

    Args:
      model_dir: the run folder (created if missing).
    """

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.path = lock_path(model_dir)
        self.held = False

    def _try_create(self) -> bool:
        record = {"pid": os.getpid(), "host": host_name(), "started": time.time()}
        tmp = temp_path(self.path)
        atomic_write_text(tmp, json.dumps(record))
        try:
            os.link(tmp, self.path)  # fails if the lock exists; creates it complete otherwise
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def acquire(self) -> ModelDirLock:
        """Take the lock (taking over a stale one of a dead local process, with a warning).

        Raises:
          LockError: another live process (or one on another host) holds it.
        """
        os.makedirs(self.model_dir, exist_ok=True)
        for _ in range(2):
            if self._try_create():
                self.held = True
                return self
            holder = read_lock(self.model_dir)
            if holder is None:  # released between our attempt and the read
                continue
            pid = holder.get("pid")
            local = holder.get("host") == host_name()
            if local and isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid):
                logger.warning(
                    "taking over the stale lock %s of %s (that process is gone)",
                    self.path,
                    _describe(holder),
                )
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            if not holder:
                raise LockError(
                    f"--model_dir {self.model_dir} has an unreadable lock file "
                    f"{self.path}; delete it if no training runs there"
                )
            hint = (
                "stop that run or use another --model_dir"
                if local
                else f"if no training runs there any more, delete {self.path}"
            )
            raise LockError(
                f"--model_dir {self.model_dir} is in use by another training run "
                f"({_describe(holder)}); {hint}"
            )
        raise LockError(f"could not take the lock {self.path} (another run keeps taking it)")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        holder = read_lock(self.model_dir)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == host_name():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False

    def __enter__(self) -> ModelDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_model_dir(params: dict[str, Any]) -> ModelDirLock | None:
    """Before a training run writes anything: lock model_dir, refuse a resume that cannot fit,
    remove temporary files of interrupted runs.

    Only the process that writes model_dir (the chief) claims it; other modes need no lock.

    Args:
      params: the resolved configuration.

    Returns:
      The held lock (release it when the run ends), or None when no lock is needed.

    Raises:
      LockError: another training run holds the lock.
      RunError: the checkpoint in model_dir does not fit this run (see check_resume_fits).
    """
    from runtime.cluster import resolve_cluster

    if params["mode"] not in ("train", "train_and_eval"):
        return None
    if not resolve_cluster(os.environ).is_chief:
        return None
    lock = ModelDirLock(params["model_dir"]).acquire()
    try:
        if params["resume_checkpoint"]:
            _check_resume(params)
        from runtime.checkpoint import remove_stale_checkpoint_temps

        remove_stale_checkpoint_temps(params["model_dir"])
    except BaseException:
        lock.release()
        raise
    return lock


def _check_resume(params: dict[str, Any]) -> None:
    """Refuse a resume that cannot fit, without starting TensorFlow's runtime.

    A multi-worker run creates its MultiWorkerMirroredStrategy after this check, and TF refuses
    it once anything has started the runtime ("Collective ops must be configured at program
    startup"): so the data set is asked only for its classes (`dataset_classes` reads no
    record); the label scan runs with the run, after the strategy exists.
    """
    from dataloader import dataset_classes
    from runtime import components
    from runtime.checkpoint import check_resume_fits, checkpoint_dir
    from runtime.checkpoint_integrity import listed_checkpoints

    if not listed_checkpoints(checkpoint_dir(params["model_dir"])):
        return
    saved_path = os.path.join(params["model_dir"], "params.json")
    try:
        with open(saved_path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = None  # an older run without params.json: the restore itself checks
    num_classes, class_names = dataset_classes(components.data_config(params, training=True))
    check_resume_fits(params, saved, num_classes, class_names)
