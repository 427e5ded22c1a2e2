"""Issue #12: no half-written file, no silent overwrite, no hang, bounded memory on any input.

One test (or more) per row of the issue's table; the cheap ones first. Each fails on the code
before the fix (named in the docstring) and passes after.
"""

import errno
import json
import logging
import math
import os
import resource
import signal
import struct
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest

import main
from dataloader.config import DataConfig, DataError
from dataloader.files import (
    DEFAULT_MAX_IMAGE_PIXELS,
    FilePolicy,
    image_size_from_header,
    skip_reason,
)
from runtime import flags
from runtime.lock import LockError, ModelDirLock, claim_model_dir, lock_path
from tests import data_fixtures
from tests.test_config_loader import BAD_MPARAMS
from tests.tiny_run import TINY_MPARAMS, TWO_BLOCKS, save_random_checkpoint, tiny_args, tiny_params
from utils import fileio
from utils.fileio import WriteError


def run_main(capsys, argv):
    """main.main(argv) -> (exit status, stderr); SystemExit (flag errors) counts as a status."""
    try:
        code = main.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line(err, code, expected_code):
    assert code == expected_code, err
    assert err.startswith("main.py: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width x height (no image data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


# ---------------------------------------------------------------------------------------------
# --mparams and flag values: exit 2, one line, no traceback, nothing written


@pytest.mark.parametrize("mparams, message", BAD_MPARAMS)
def test_bad_mparams_value_exits_2_and_writes_nothing(capsys, tmp_path, mparams, message):
    """Before: width_coefficient=abc/-1, dropout_rate=5 exited 1 after writing params.json;
    train_img_size=abc raised a traceback."""
    model_dir = tmp_path / "run"
    code, err = run_main(
        capsys,
        [
            "--cfg",
            "config/efficientnet_v2/s_cfg.py",
            "--mparams",
            mparams,
            "--dataset",
            "digits",
            "--model_dir",
            str(model_dir),
        ],
    )
    assert_one_line(err, code, 2)
    assert __import__("re").search(message, err), err
    assert not model_dir.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr_init", "nan"], r"--lr_init must be a finite number, got nan"),
        (["--label_smoothing", "inf"], r"--label_smoothing must be a finite number"),
        (
            ["--log_filename", "../../x.json"],
            r"--log_filename must be a file name inside --model_dir",
        ),
        (["--log_filename", "/tmp/x.json"], r"--log_filename must be a file name"),
        (["--log_filename", ".."], r"--log_filename must be a file name"),
        (["--max_image_pixels", "0"], r"--max_image_pixels must be >= 1"),
        (["--raug_num_layers", "-1"], r"--raug_num_layers must be >= 0"),
    ],
)
def test_bad_flag_values_exit_2_and_write_nothing(capsys, tmp_path, argv, message):
    """Before: NaN passed every range check and --log_filename ../../x.json wrote outside."""
    model_dir = tmp_path / "run"
    code, err = run_main(capsys, tiny_args(model_dir, "train", *argv))
    assert_one_line(err, code, 2)
    assert __import__("re").search(message, err), err
    assert not model_dir.exists()


def test_help_says_cfg_executes_python(capsys):
    with pytest.raises(SystemExit):
        flags.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "executed as Python code" in text
    assert "--follow_symlinks" in text and "--max_image_pixels" in text


def test_pixel_limit_defaults_agree():
    assert (
        flags.DEFAULT_MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS == DataConfig().max_image_pixels
    )


# ---------------------------------------------------------------------------------------------
# Inputs: regular files only, no symlink out of the folder, header pixel limit, empty class


def test_image_header_sizes_of_every_format(tmp_path):
    from PIL import Image

    array = np.zeros((30, 70, 3), np.uint8)
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(array).save(path, format=fmt)
        assert image_size_from_header(str(path)) == (70, 30), fmt
    # A JPEG with a large EXIF segment before the SOF, and a progressive JPEG.
    exif = Image.Exif()
    exif[0x010E] = "x" * 20000
    Image.fromarray(array).save(tmp_path / "exif.jpg", exif=exif.tobytes())
    Image.fromarray(array).save(tmp_path / "prog.jpg", progressive=True)
    assert image_size_from_header(str(tmp_path / "exif.jpg")) == (70, 30)
    assert image_size_from_header(str(tmp_path / "prog.jpg")) == (70, 30)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 100)
    assert image_size_from_header(str(tmp_path / "junk.jpg")) is None


def test_predict_skips_fifo_instead_of_hanging(tmp_path):
    """Before: a FIFO named x.jpg was listed, and reading it blocked forever."""
    from runtime.predict import find_images

    (tmp_path / "a.jpg").write_bytes(data_fixtures.jpeg(0))
    os.mkfifo(tmp_path / "x.jpg")
    skipped = []
    assert find_images(str(tmp_path), skipped=skipped) == [str(tmp_path / "a.jpg")]
    assert skipped == [{"file": "x.jpg", "error": "not a regular file (FIFO)"}]


def test_predict_does_not_follow_symlinks_out_of_the_folder(tmp_path):
    """Before: a link to /etc/passwd (or any file outside) was read."""
    from runtime.predict import find_images

    folder, outside = tmp_path / "in", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(data_fixtures.jpeg(1))
    (folder / "a.jpg").write_bytes(data_fixtures.jpeg(0))
    os.symlink(outside / "secret.jpg", folder / "link.jpg")
    os.symlink(folder / "a.jpg", folder / "inside.jpg")
    os.symlink(outside, folder / "linked_dir")
    skipped = []
    found = find_images(str(folder), skipped=skipped)
    assert found == [str(folder / "a.jpg"), str(folder / "inside.jpg")]
    assert [s["file"] for s in skipped] == ["link.jpg"]
    assert skipped[0]["error"].startswith("symlink out of the folder")
    followed = find_images(str(folder), FilePolicy(follow_symlinks=True))
    assert (
        str(folder / "link.jpg") in followed
        and str(folder / "linked_dir" / "secret.jpg") in followed
    )


def test_predict_rejects_a_decompression_bomb_from_its_header(tmp_path):
    """Before: a 20000x20000 PNG was decoded in full (RSS 0.65 -> 2.1 GB for one file)."""
    from runtime.predict import PredictError, find_images

    (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000) + b"\x00" * 64)
    (tmp_path / "ok.png").write_bytes(data_fixtures.png(0))
    skipped = []
    assert find_images(str(tmp_path), skipped=skipped) == [str(tmp_path / "ok.png")]
    assert skipped[0]["file"] == "bomb.png"
    assert "20000x20000 = 400,000,000 > --max_image_pixels 89,478,485" in skipped[0]["error"]
    with pytest.raises(PredictError, match="cannot be read: too many pixels"):
        find_images(str(tmp_path / "bomb.png"))


def test_predict_reports_refused_files_end_to_end(capsys, tmp_path):
    """The skipped files appear in predictions.json's unreadable list, with their reason."""
    from runtime.predict import run_predict

    params = tiny_params(
        tmp_path / "run",
        "predict",
        "--predict_img_dir",
        str(tmp_path),
        "--max_image_pixels",
        "1000",
    )
    save_random_checkpoint(params)
    images = tmp_path / "images"
    images.mkdir()
    (images / "small.jpg").write_bytes(data_fixtures.jpeg(0, (20, 20)))
    (images / "large.jpg").write_bytes(data_fixtures.jpeg(0, (40, 48)))
    os.mkfifo(images / "pipe.png")
    params["predict_img_dir"] = str(images)
    result = run_predict(params)
    assert (result["num_files"], result["num_predicted"], result["num_unreadable"]) == (3, 1, 2)
    saved = json.load(open(tmp_path / "run" / "predictions.json"))
    reasons = {u["file"]: u["error"] for u in saved["unreadable"]}
    assert reasons["pipe.png"] == "not a regular file (FIFO)"
    assert reasons["large.jpg"].startswith(
        "too many pixels (48x40 = 1,920 > --max_image_pixels 1,000)"
    )


def test_training_folder_skips_and_counts_unsafe_files(tmp_path, caplog):
    from dataloader.sources import FolderSource

    data_fixtures.make_folder_tree(str(tmp_path), ["a", "b"], {"train": 2, "val": 1}, size=(20, 20))
    (tmp_path / "train" / "a" / "huge.png").write_bytes(png_header(20000, 20000))
    os.mkfifo(tmp_path / "train" / "b" / "pipe.jpg")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.jpg"
    outside.write_bytes(data_fixtures.jpeg(0))
    os.symlink(outside, tmp_path / "train" / "a" / "out.jpg")
    with caplog.at_level(logging.WARNING):
        source = FolderSource(DataConfig(dataset="folder", data_dir=str(tmp_path)))
        paths, labels = source.file_list("train")
    assert len(paths) == 4 and labels == [0, 0, 1, 1]
    assert sorted(os.path.basename(p) for p, _ in source.skipped["train"]) == [
        "huge.png",
        "out.jpg",
        "pipe.jpg",
    ]
    assert "folder/train: skipped 3 file(s)" in caplog.text


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    """Before: an empty class folder silently became an extra class."""
    from dataloader.sources import FolderSource

    data_fixtures.make_folder_tree(str(tmp_path), ["a", "b"], {"train": 2, "val": 1}, size=(20, 20))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/empty holds no usable file"):
        FolderSource(DataConfig(dataset="folder", data_dir=str(tmp_path))).file_list("train")


def test_skip_reason_of_devices_and_missing_files(tmp_path):
    policy = FilePolicy()
    assert skip_reason("/dev/null", None, policy) == "not a regular file (device)"
    assert skip_reason(str(tmp_path / "nope.jpg"), None, policy).startswith("not a regular file")
    os.symlink(tmp_path / "nope.jpg", tmp_path / "dangling.jpg")
    assert skip_reason(str(tmp_path / "dangling.jpg"), str(tmp_path), policy).startswith(
        "not a regular file"
    )


# ---------------------------------------------------------------------------------------------
# The model_dir lock, stale temporary files, resume that does not fit


def test_second_training_into_a_locked_model_dir_exits_2_naming_the_holder(capsys, tmp_path):
    """Before: two trainings into one model_dir both exited 0, overwriting each other."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(str(model_dir))
        with open(lock_path(str(model_dir)), "w") as f:
            json.dump({"pid": holder.pid, "host": fileio.host_name(), "started": 0}, f)
        code, err = run_main(capsys, tiny_args(model_dir, "train", "--max_epochs", "1"))
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


def test_resume_with_another_architecture_is_refused_before_writing(capsys, tmp_path):
    """Before: refused only after params.json was overwritten and log.json appended."""
    model_dir = tmp_path / "run"
    params = tiny_params(model_dir, "train")
    save_random_checkpoint(params)
    from runtime.class_names import save_class_names
    from runtime.components import write_json

    write_json(str(model_dir / "params.json"), params)
    save_class_names(str(model_dir), 10, [str(i) for i in range(10)])
    before = {n: (model_dir / n).read_bytes() for n in ("params.json", "class_names.json")}
    listing = sorted(os.listdir(model_dir))
    argv = tiny_args(model_dir, "train")
    other = TINY_MPARAMS.replace("width_coefficient=0.1", "width_coefficient=0.2")
    argv[argv.index(TINY_MPARAMS)] = other
    code, err = run_main(capsys, argv)
    assert_one_line(err, code, 2)
    assert "cannot resume: the checkpoint in" in err and "width_coefficient=0.1" in err
    assert "this run has width_coefficient=0.2" in err and "--no-resume_checkpoint" in err
    assert sorted(os.listdir(model_dir)) == listing
    assert {n: (model_dir / n).read_bytes() for n in before} == before


def test_check_resume_fits_classes_optimizer_and_ema(tmp_path):
    from runtime.checkpoint import check_resume_fits
    from runtime.class_names import save_class_names
    from runtime.errors import RunError

    params = tiny_params(tmp_path, "train")
    saved = json.loads(json.dumps(params, default=str))
    check_resume_fits(params, saved, 10, None)  # the same run fits
    save_class_names(str(tmp_path), 10, [str(i) for i in range(10)])
    with pytest.raises(RunError, match="has 10 classes, the data set of this run has 7"):
        check_resume_fits(params, saved, 7, None)
    names = tuple("0123456789"[::-1])
    with pytest.raises(RunError, match="class 0 of the checkpoint is '0'.*'9'.*mixed up"):
        check_resume_fits(params, saved, 10, names)
    with pytest.raises(RunError, match="--optimizer rmsprop, this run has adam"):
        check_resume_fits({**params, "optimizer": "adam"}, saved, 10, None)
    with pytest.raises(RunError, match="has no EMA"):
        check_resume_fits({**params, "moving_average_decay": 0.9}, saved, 10, None)


# ---------------------------------------------------------------------------------------------
# Disk full / killed writes of checkpoints and exports


class _FileSizeLimit:
    """RLIMIT_FSIZE for this process: writes past `limit` bytes fail with EFBIG, as on a full
    disk (SIGXFSZ ignored so the write returns the error instead of killing the process)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old_limit[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old_limit)
        signal.signal(signal.SIGXFSZ, self.old_handler)


def test_checkpoint_write_failure_is_one_line_and_leaves_no_temp(tmp_path):
    """Before: a raw ResourceExhausted/OutOfRange traceback and ckpt-N_temp left behind."""
    import keras

    from runtime.checkpoint import TrainingCheckpoint
    from runtime.errors import RunError
    from utils.optimizers import OptimizerConfig, build_optimizer

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(2000)(inputs)))
    opt = build_optimizer(OptimizerConfig(name="momentum"), 0.1, model.trainable_variables)
    opt.build(model.trainable_variables)
    ckpt = TrainingCheckpoint(str(tmp_path), model, opt)
    first = ckpt.save(1)
    with _FileSizeLimit(20_000), pytest.raises(RunError) as info:
        ckpt.save(2)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot write checkpoint {tmp_path}")
    assert "free on its filesystem" in message and f"still {first}" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint",
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
    ]
    assert ckpt.latest == first and ckpt.restore_latest() == 1


def _tiny_keras_model():
    import keras

    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_final_export_refuses_a_full_disk_before_h5py_writes(tmp_path, monkeypatch):
    """Before: disk full at the final .h5 export segfaulted (h5py) and left a truncated file."""
    from runtime.checkpoint import save_weights_atomically

    model = _tiny_keras_model()
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"previous weights")
    real = fileio.shutil.disk_usage
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(
        WriteError,
        match=r"cannot write .*model\.weights\.h5: it needs about "
        r"1\.0 MiB, only 1000 B free",
    ):
        save_weights_atomically(model, str(path))
    assert path.read_bytes() == b"previous weights"
    assert os.listdir(tmp_path) == ["model.weights.h5"]


def test_interrupted_export_keeps_the_previous_weights(tmp_path, monkeypatch):
    """Before: a write killed midway left a 0-byte / truncated model.weights.h5."""
    from runtime.checkpoint import save_weights_atomically

    model = _tiny_keras_model()
    path = tmp_path / "model.weights.h5"
    model.save_weights(str(path))
    good = path.read_bytes()

    def half_write_then_fail(target):
        with open(target, "wb") as f:
            f.write(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_weights", half_write_then_fail)
    with pytest.raises(WriteError, match="No space left on device"):
        save_weights_atomically(model, str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.weights.h5"]
    monkeypatch.undo()
    save_weights_atomically(model, str(path))
    _tiny_keras_model().load_weights(str(path))


def test_sigkill_during_weights_export_leaves_previous_file_loadable(tmp_path):
    """A process SIGKILLed inside save_weights: the old .h5 still loads, the temp is cleaned."""
    path = tmp_path / "model.weights.h5"
    script = f"""
import os, signal, sys
sys.path.insert(0, {os.getcwd()!r})
import keras
from runtime.checkpoint import save_weights_atomically
inputs = keras.Input((4,))
model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
save_weights_atomically(model, {str(path)!r})
real = model.save_weights
def killed(target):
    real(target)
    os.truncate(target, 100)
    os.kill(os.getpid(), signal.SIGKILL)
model.save_weights = killed
save_weights_atomically(model, {str(path)!r})
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _tiny_keras_model().load_weights(str(path))
    assert fileio.remove_stale_temps(str(tmp_path)) and os.listdir(tmp_path) == ["model.weights.h5"]


# ---------------------------------------------------------------------------------------------
# Non-finite validation loss, chance-level top-1


def _fake_run(num_classes=10):
    records = []
    log = types.SimpleNamespace(log=lambda step, data, **kw: records.append((step, dict(data))))
    run = types.SimpleNamespace(
        num_classes=num_classes,
        log=log,
        checkpoint=types.SimpleNamespace(directory="run/checkpoints"),
    )
    return run, records


def test_non_finite_validation_loss_fails_the_run_and_is_logged():
    """Before: --lr_init 1e6 gave val.loss NaN, top-1 0, exit 0 and an exported model."""
    from runtime.errors import RunError
    from runtime.train import _check_validation

    run, records = _fake_run()
    summary = {"global_step": 3}
    with pytest.raises(RunError, match=r"validation loss is nan after training .*not exported"):
        _check_validation(summary, {"loss": math.nan, "top1": 0.0}, run)
    assert records and records[0][0] == []
    assert any("at or below chance (1/10 = 0.1000)" in w for w in records[0][1]["warnings"])


def test_chance_level_top1_is_a_warning_in_the_summary(caplog):
    from runtime.train import _check_validation

    run, _ = _fake_run(num_classes=4)
    summary = {}
    with caplog.at_level(logging.WARNING):
        _check_validation(summary, {"loss": 1.4, "top1": 0.25}, run)
    assert summary["warnings"] == [
        "validation top-1 0.2500 is at or below chance (1/4 = 0.2500): the model has not "
        "learned; check --lr_init and the labels"
    ]
    summary = {}
    _check_validation(summary, {"loss": 0.4, "top1": 0.9}, run)
    assert "warnings" not in summary


def test_export_does_not_happen_after_a_nan_validation(capsys, tmp_path, monkeypatch):
    """End to end: a NaN validation loss exits 1 in one line and writes no model.weights.h5."""
    from runtime import train

    def nan_eval(self, desc):
        return {"top1": 0.0, "top5": 0.5, "loss": math.nan}

    monkeypatch.setattr(train.TrainRun, "evaluate", nan_eval)
    model_dir = tmp_path / "run"
    code, err = run_main(
        capsys,
        tiny_args(
            model_dir,
            "train_and_eval",
            "--max_epochs",
            "1",
            "--steps_per_epoch",
            "1",
            "--train_batch_size",
            "4",
            "--mparams",
            f"{TINY_MPARAMS},{TWO_BLOCKS}",
        ),
    )
    last = err.splitlines()[-1] + "\n"  # progress bars come before it on stderr
    assert_one_line(last, code, 1)
    assert "validation loss is nan after training" in last
    assert not (model_dir / "model.weights.h5").exists()
    assert not (model_dir / "train.lock").exists()
    summary = [json.loads(line[len("DLLL ") :]) for line in open(model_dir / "log.json")][-1]
    assert summary["step"] == [] and summary["data"]["warnings"]


# ---------------------------------------------------------------------------------------------
# Random state in the checkpoint: a killed and resumed seeded run reproduces the losses


class _Killed(Exception):
    pass


def _step_losses(model_dir) -> dict:
    losses = {}
    for line in open(model_dir / "log.json"):
        record = json.loads(line[len("DLLL ") :])
        if record.get("type") == "LOG" and len(record["step"]) == 2:
            losses[tuple(record["step"])] = record["data"]["train.loss"]
    return losses


@pytest.mark.slow  # four tiny training runs (~90 s on 2 busy cores)
def test_resumed_seeded_run_with_dropout_and_stochastic_depth_reproduces_losses(
    capsys, tmp_path, monkeypatch
):
    """Before: the SeedGenerator states were not checkpointed and the resumed run restarted the
    data stream, so epoch 2 of a resumed run drew other dropout masks and other batches.

    Tolerance: both runs execute the same ops on the same inputs with the same random numbers;
    only the order of multi-threaded float32 reductions may differ, far below 1e-5 relative."""
    from runtime.checkpoint import TrainingCheckpoint

    args = (
        "--seed",
        "3",
        "--max_epochs",
        "2",
        "--steps_per_epoch",
        "2",
        "--log_steps",
        "1",
        "--train_batch_size",
        "8",
        "--save_checkpoint_freq",
        "1",
        "--augmenter_name",
        "randaugment",
        "--lr_warmup_epochs",
        "0",
    )
    mparams = TINY_MPARAMS + ",dropout_rate=0.5,drop_connect_rate=0.5"

    def argv(model_dir):
        out = tiny_args(model_dir, "train", *args)
        out[out.index(TINY_MPARAMS)] = mparams
        return out

    assert main.main(argv(tmp_path / "full")) == 0
    full = _step_losses(tmp_path / "full")
    real_save = TrainingCheckpoint.save

    def save_then_die(self, epoch):
        path = real_save(self, epoch)
        if epoch == 1:
            raise _Killed
        return path

    monkeypatch.setattr(TrainingCheckpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        main.main(argv(tmp_path / "resumed"))
    monkeypatch.setattr(TrainingCheckpoint, "save", real_save)
    assert main.main(argv(tmp_path / "resumed")) == 0
    resumed = _step_losses(tmp_path / "resumed")
    assert sorted(full) == sorted(resumed) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for step in full:
        assert resumed[step] == pytest.approx(full[step], rel=1e-5), step
    # The random state matters: a run with another seed gives other losses.
    assert full[(2, 1)] != pytest.approx(_other_seed_loss(capsys, tmp_path, argv), rel=1e-3)


def _other_seed_loss(capsys, tmp_path, argv):
    out = argv(tmp_path / "other")
    out[out.index("--seed") + 1] = "4"
    assert main.main(out) == 0
    return _step_losses(tmp_path / "other")[(2, 1)]


def test_seed_states_of_dropout_and_stochastic_depth_are_in_the_checkpoint(tmp_path):
    import tensorflow as tf

    from runtime.checkpoint import seed_states
    from runtime.components import create_model

    params = tiny_params(tmp_path, "train")
    model = create_model(params, 10)
    states = seed_states(model)
    dropouts = [layer for layer in model.layers if "dropout" in layer.name]
    assert dropouts and len(states) >= 2  # head dropout + stochastic-depth blocks
    from runtime.checkpoint import random_state

    path = tf.train.Checkpoint(rng=random_state(model)).save(str(tmp_path / "ck"))
    keys = [name for name, _ in tf.train.list_variables(path)]
    assert sum(k.startswith("rng/seed_") for k in keys) == len(states)
    assert any(k.startswith("rng/generator") for k in keys)


def test_checkpoint_restores_dropout_random_state(tmp_path):
    """Restoring a training checkpoint restores the dropout masks drawn next (before: the
    SeedGenerator states were not saved, so the masks after a resume were the first run's
    masks from its start)."""
    import keras

    from runtime.checkpoint import TrainingCheckpoint
    from utils.optimizers import OptimizerConfig, build_optimizer

    keras.utils.set_random_seed(5)
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
    opt = build_optimizer(OptimizerConfig(name="momentum"), 0.1, model.trainable_variables)
    ckpt = TrainingCheckpoint(str(tmp_path), model, opt)
    x = np.ones((4, 64), np.float32)
    model(x, training=True)
    ckpt.save(1)
    expected = [np.asarray(model(x, training=True)) for _ in range(2)]
    assert not np.array_equal(expected[0], expected[1])
    ckpt.restore_latest()
    again = [np.asarray(model(x, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])


def test_epoch_data_seed_depends_only_on_seed_and_epoch():
    from runtime.train import epoch_data_seed

    assert epoch_data_seed(None, 3) is None and epoch_data_seed(7, None) == 7
    seeds = {epoch_data_seed(7, e) for e in range(100)}
    assert len(seeds) == 100 and epoch_data_seed(7, 4) == epoch_data_seed(7, 4)
