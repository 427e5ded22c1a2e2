import os

import pytest

from utils.fileio import atomic_write_text


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
