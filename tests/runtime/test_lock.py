"""The model_dir lock (runtime/lock.py): one training per model_dir, stale locks of dead
processes taken over, stale temporary files removed at start-up (issue #12)."""

import json
import logging
import os
import subprocess

import pytest

from runtime.lock import LockError, ModelDirLock, claim_model_dir, lock_path
from tests.helpers import ROOT
from tests.helpers.cli import assert_one_line
from tests.helpers.cluster_env import tf_config
from tests.helpers.data_fixtures import make_folder_tree, write_tfrecords
from tests.helpers.processes import cpu_env, program
from tests.helpers.tiny_run import save_random_checkpoint, tiny_args, tiny_params
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


def test_resume_checks_do_not_start_tensorflow_on_any_data_source(tmp_path):
    """Before: resuming a multi-worker run on TFRecords, the resume check scanned the labels
    with tf.data, which started TensorFlow's runtime; the chief's MultiWorkerMirroredStrategy
    then failed ("Collective ops must be configured at program startup") and its peer waited
    for the 300 s start-up timeout."""
    from dataloader.tfrecord_format import write_metadata
    from runtime.class_names import save_class_names
    from runtime.components import write_json

    labels = [list(range(10)), list(range(10))]
    write_tfrecords(str(tmp_path / "shards"), "train", labels)
    write_tfrecords(str(tmp_path / "shards"), "validation", labels[:1])
    write_tfrecords(str(tmp_path / "shards_meta"), "train", labels)
    write_tfrecords(str(tmp_path / "shards_meta"), "validation", labels[:1])
    write_metadata(str(tmp_path / "shards_meta"), 10, 20, 10, [str(i) for i in range(10)])
    make_folder_tree(str(tmp_path / "tree"), [f"c{i}" for i in range(10)], {"train": 1, "val": 1})
    data = {  # once started, the runtime stays started: the TFRecord sets come last
        "digits": (),
        "synthetic": (),
        "folder": ("--data_dir", str(tmp_path / "tree")),
        "imagenet_meta": ("--data_dir", str(tmp_path / "shards_meta")),
        "imagenet": ("--data_dir", str(tmp_path / "shards")),
    }
    runs = []
    for name, data_args in data.items():
        model_dir = tmp_path / f"run_{name}"
        args = ["--dataset", name.split("_")[0], *data_args, "--num_gpus", "0"]
        params = tiny_params(model_dir, "train", *args)
        save_random_checkpoint(params)
        write_json(str(model_dir / "params.json"), params)
        save_class_names(str(model_dir), 10, None)
        runs.append(tiny_args(model_dir, "train", *args))
    env = cpu_env(**tf_config({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}))
    proc = subprocess.run(
        program("prerun_checks", json.dumps(runs)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = json.loads(proc.stdout.splitlines()[-1])
    assert started == {f"run_{name}": False for name in data}
    assert "checking the labels" not in proc.stderr
