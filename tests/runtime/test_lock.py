"""The model_dir lock (runtime/lock.py): one training per model_dir, stale locks of dead
processes taken over, stale temporary files removed at start-up (issue #12)."""

import json
import logging
import os
import subprocess

import pytest

from runtime.lock import LockError, ModelDirLock, claim_model_dir, lock_path
from tests.helpers.cli import assert_one_line
from tests.helpers.tiny_run import tiny_args
from utils import fileio


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_second_training_into_a_locked_model_dir_exits_2_naming_the_holder(run_main, tmp_path):
    """Before: two trainings into one model_dir both exited 0, overwriting each other."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock_path(str(model_dir))
        with open(lock_path(str(model_dir)), "w") as f:
            json.dump({"pid": holder.pid, "host": fileio.host_name(), "started": 0}, f)
        code, err = run_main(tiny_args(model_dir, "train", "--max_epochs", "1"))
    finally:
        holder.kill()
        holder.wait()
    assert_one_line(err, code, 2)
    assert (
        f"is in use by another training run (pid {holder.pid} on host {fileio.host_name()}" in err
    )
    assert sorted(os.listdir(model_dir)) == ["train.lock"]


def test_lock_is_exclusive_released_and_stale_locks_are_taken_over(tmp_path, caplog):
    first = ModelDirLock(str(tmp_path)).acquire()
    record = json.load(open(lock_path(str(tmp_path))))
    assert record["pid"] == os.getpid() and record["host"] == fileio.host_name()
    first.release()
    assert not os.path.exists(lock_path(str(tmp_path)))
    # A lock of a process that died is taken over, with a warning.
    pid = dead_pid()
    with open(lock_path(str(tmp_path)), "w") as f:
        json.dump({"pid": pid, "host": fileio.host_name(), "started": 0}, f)
    with caplog.at_level(logging.WARNING), ModelDirLock(str(tmp_path)):
        assert json.load(open(lock_path(str(tmp_path))))["pid"] == os.getpid()
    assert f"taking over the stale lock {lock_path(str(tmp_path))} of pid {pid}" in caplog.text
    # Another host's lock cannot be checked: refused, saying which file to delete.
    with open(lock_path(str(tmp_path)), "w") as f:
        json.dump({"pid": 1, "host": "elsewhere", "started": 0}, f)
    with pytest.raises(LockError, match=r"pid 1 on host elsewhere.*delete .*train\.lock"):
        ModelDirLock(str(tmp_path)).acquire()


def test_only_training_needs_the_lock(tmp_path):
    with open(lock_path(str(tmp_path)), "w") as f:
        json.dump({"pid": os.getppid(), "host": fileio.host_name(), "started": 0}, f)
    for mode in ("eval", "predict", "inference_benchmark", "training_benchmark"):
        assert claim_model_dir({"mode": mode, "model_dir": str(tmp_path)}) is None
    with pytest.raises(LockError):
        claim_model_dir({"mode": "train", "model_dir": str(tmp_path), "resume_checkpoint": False})


def test_start_up_removes_stale_temporary_files(tmp_path):
    """Before: ckpt-N_temp folders and checkpoint.tmp* files were never cleaned up."""
    model_dir = tmp_path / "run"
    ckpt = model_dir / "checkpoints"
    (ckpt / "ckpt-3_temp").mkdir(parents=True)
    (ckpt / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (ckpt / "checkpoint.tmp0123abcd").write_text("partial")
    (ckpt / "ckpt-2.index").write_bytes(b"kept")
    dead = dead_pid()
    (model_dir / f".tmp-{dead}-model.weights.h5").write_bytes(b"")
    lock = claim_model_dir(
        {"mode": "train", "model_dir": str(model_dir), "resume_checkpoint": False}
    )
    try:
        assert sorted(os.listdir(ckpt)) == ["ckpt-2.index"]
        assert sorted(os.listdir(model_dir)) == ["checkpoints", "train.lock"]
    finally:
        lock.release()
