import errno
import os
import subprocess

import pytest

from tests.helpers import ROOT
from tests.helpers.processes import program
from utils import fileio
from utils.fileio import (
    WriteError,
    atomic_dir,
    atomic_path,
    atomic_write,
    atomic_write_text,
    remove_stale_temps,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    assert atomic_write_text(str(path), "new\n") == str(path)
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(str(path), None)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_disk_full_midway_is_one_line_with_path_and_free_space(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("old")
    with pytest.raises(WriteError) as info, atomic_write(str(path)) as f:
        f.write("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "No space left on device" in message and " free" in message
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["predictions.csv"]


def test_atomic_path_keeps_suffix_and_renames(tmp_path):
    path = tmp_path / "model.weights.h5"
    with atomic_path(str(path)) as tmp:
        assert tmp.endswith(".weights.h5") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"x")
    assert path.read_bytes() == b"x"
    assert os.listdir(tmp_path) == ["model.weights.h5"]


def test_atomic_dir_replaces_old_folder_only_when_complete(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with pytest.raises(WriteError), atomic_dir(str(target)) as tmp:
        (open(os.path.join(tmp, "new.pb"), "w")).close()
        raise OSError(errno.EROFS, "Read-only file system")
    assert sorted(os.listdir(target)) == ["old.pb"]
    assert os.listdir(tmp_path) == ["saved_model"]
    with atomic_dir(str(target)) as tmp:
        with open(os.path.join(tmp, "new.pb"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(target)) == ["new.pb"]
    assert os.listdir(tmp_path) == ["saved_model"]


def test_sigkill_during_write_leaves_old_file_and_a_stale_temp_that_is_cleaned(tmp_path):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"complete old weights")
    proc = subprocess.run(program("killed_atomic_write", path), cwd=ROOT)
    assert proc.returncode == -9
    assert path.read_bytes() == b"complete old weights"
    stale = [n for n in os.listdir(tmp_path) if n.startswith(fileio.TEMP_PREFIX)]
    assert len(stale) == 1
    assert remove_stale_temps(str(tmp_path)) == [str(tmp_path / stale[0])]
    assert os.listdir(tmp_path) == ["model.weights.h5"]


def test_remove_stale_temps_keeps_live_writers(tmp_path):
    live = tmp_path / f".tmp-{os.getppid()}-x.json"
    live.write_text("writing")
    mine = tmp_path / f".tmp-{os.getpid()}-y.json"
    mine.write_text("writing")
    assert remove_stale_temps(str(tmp_path)) == []
    assert live.exists() and mine.exists()


def test_free_space_of_missing_path_uses_existing_parent(tmp_path):
    assert fileio.free_space(str(tmp_path / "a" / "b")).endswith("B")
