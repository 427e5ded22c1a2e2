import ast
import io
import json
import os

import numpy as np
import pytest

from tests.helpers import ROOT
from utils.dllogger import (
    Verbosity,
    create_metrics_logger,
    format_step,
    print_result,
    read_log,
)


def _write_run(path, **kwargs):
    with create_metrics_logger(str(path), **kwargs) as mlog:
        mlog.log_params({"lr_init": 0.008, "optimizer": "rmsprop", "use_amp": False})
        mlog.metadata("train.loss", {"format": ":.4f"})
        mlog.log([0, 5], {"train.loss": np.float32(2.5), "lr": 0.1}, global_step=5)
        mlog.log([0], {"val.top1": 0.25}, verbosity=Verbosity.VERBOSE)
        mlog.log([], {"val.top1": 0.5, "train.total_ips": np.float64(123.0)})


def test_log_file_parses_line_by_line_in_dllogger_format(tmp_path):
    path = tmp_path / "log.json"
    _write_run(path, stream=io.StringIO())
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    records = []
    for line in lines:
        assert line.startswith("DLLL {")
        records.append(json.loads(line[len("DLLL ") :]))
    for rec in records:
        # timestamp/elapsedtime are strings in DLLogger's files.
        assert float(rec["timestamp"]) > 1.6e9
        assert float(rec["elapsedtime"]) >= 0
        assert isinstance(rec["datetime"], str) and len(rec["datetime"]) >= 19
    logs = [r for r in records if r["type"] == "LOG"]
    assert [list(r) for r in logs] == [
        ["timestamp", "datetime", "elapsedtime", "type", "step", "data"]
    ] * 4
    assert logs[0]["step"] == "PARAMETER"
    assert logs[0]["data"] == {"lr_init": 0.008, "optimizer": "rmsprop", "use_amp": False}
    assert logs[1]["step"] == [0, 5] and logs[1]["data"] == {"train.loss": 2.5, "lr": 0.1}
    assert logs[2]["step"] == [0]
    assert logs[3]["step"] == [] and logs[3]["data"]["train.total_ips"] == 123.0
    meta = records[1]
    assert meta["type"] == "METADATA" and meta["metric"] == "train.loss"
    assert meta["metadata"] == {"format": ":.4f"}
    assert read_log(str(path)) == records


def test_stdout_sink_respects_verbosity_and_format(tmp_path):
    out = io.StringIO()
    _write_run(tmp_path / "log.json", stream=out)
    text = out.getvalue()
    assert "Epoch: 0 Step: 5 train.loss : 2.5000 lr : 0.1" in text
    assert "Summary: val.top1 : 0.5" in text
    assert "Epoch: 0 val.top1" not in text  # VERBOSE record: file only
    assert "3 parameters logged" in text


def test_non_chief_writes_nothing(tmp_path):
    out = io.StringIO()
    path = tmp_path / "log.json"
    _write_run(path, is_chief=False, stream=out, tensorboard_dir=str(tmp_path / "tb"))
    assert not path.exists()
    assert not (tmp_path / "tb").exists()
    assert out.getvalue() == ""


def test_append_keeps_previous_lines_and_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "log.json"
    _write_run(path, stream=io.StringIO())
    _write_run(path, stream=io.StringIO(), append=True)
    assert len(read_log(str(path))) == 10
    with open(path, "a") as f:
        f.write('DLLL {"timestamp": "17')  # a kill -9 in the middle of a write
    assert len(read_log(str(path))) == 10


def test_append_after_a_killed_run_drops_its_torn_line(tmp_path):
    path = tmp_path / "log.json"
    _write_run(path, stream=io.StringIO())
    with open(path, "a") as f:
        f.write('DLLL {"timestamp": "17')  # the killed run's partial record
    _write_run(path, stream=io.StringIO(), append=True)
    records = read_log(str(path))  # raises on a corrupt middle line
    assert len(records) == 10
    assert path.read_text().count("DLLL ") == 10


def test_a_resumed_run_drops_what_the_killed_run_logged_after_its_checkpoint(tmp_path, caplog):
    """Killed at epoch 2 step 30 after a checkpoint at step 20: the resumed run logs steps 21-30
    again, so the earlier records of those steps go (a warning says how many); records before
    the checkpoint, of other kinds and the resumed run's own stay."""
    path = tmp_path / "log.json"
    with create_metrics_logger(str(path), stream=io.StringIO()) as mlog:
        mlog.log_params({"lr_init": 0.1})
        for epoch, step in ((1, 10), (1, 20), (1, 30)):
            mlog.log([epoch, step], {"train.loss": float(step)})
        mlog.log([1], {"val.top1": 0.5})
        for step in (10, 20, 30):
            mlog.log([2, step], {"train.loss": float(step)})
    with create_metrics_logger(str(path), stream=io.StringIO(), append=True) as mlog:
        assert mlog.drop_after([2, 20]) == 1
        mlog.log_params({"lr_init": 0.1})
        mlog.log([2, 30], {"train.loss": 3.0})
    steps = [r["step"] for r in read_log(str(path))]
    assert steps == ["PARAMETER", [1, 10], [1, 20], [1, 30], [1], [2, 10], [2, 20]] + [
        "PARAMETER",
        [2, 30],
    ]
    assert "removed 1 record(s) logged after step [2, 20]" in caplog.text
    # At an epoch boundary ([1]: after epoch 1's steps) the whole next epoch goes.
    with create_metrics_logger(str(path), stream=io.StringIO(), append=True) as mlog:
        assert mlog.drop_after([1]) == 3
    assert [r["step"] for r in read_log(str(path))][-2:] == [[1], "PARAMETER"]


def test_a_new_log_keeps_the_earlier_one_aside(tmp_path):
    path = tmp_path / "log.json"
    _write_run(path, stream=io.StringIO())
    first = path.read_text()
    _write_run(path, stream=io.StringIO())
    _write_run(path, stream=io.StringIO())
    assert (tmp_path / "log.json.1").read_text() == first
    assert len(read_log(str(tmp_path / "log.json.2"))) == 5
    assert len(read_log(str(path))) == 5


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "log.json"
    path.write_text('DLLL {"type": "LOG"}\nDLLL {oops\nDLLL {"type": "LOG"}\n')
    with pytest.raises(ValueError, match=r"log.json:2: not a DLLogger JSON line"):
        read_log(str(path))


def test_tensorboard_sink_writes_event_file(tmp_path):
    tb = tmp_path / "tb"
    _write_run(tmp_path / "log.json", stream=io.StringIO(), tensorboard_dir=str(tb))
    events = [f for f in os.listdir(tb) if f.startswith("events.out.tfevents")]
    assert len(events) == 1
    import tensorflow as tf

    tags = set()
    for raw in tf.data.TFRecordDataset(str(tb / events[0])):
        event = tf.compat.v1.Event.FromString(raw.numpy())
        tags.update(v.tag for v in event.summary.value)
    assert {"train.loss", "lr", "parameters"} <= tags


def test_format_step():
    assert format_step("PARAMETER") == "PARAMETER"
    assert format_step([]) == "Summary:"
    assert format_step([2, 30]) == "Epoch: 2 Step: 30"
    assert format_step((1, 5, 7)) == "Epoch: 1 Step: 5 Eval step: 7"


def test_print_result_writes_the_block_once_to_stdout(capsys):
    print_result("table\nresults written to x.json")
    assert capsys.readouterr() == ("table\nresults written to x.json\n", "")


def test_the_application_prints_only_through_print_result():
    """One path per console line: no bare print() next to the logger, the bar and the sinks."""
    files = [os.path.join(ROOT, "main.py")]
    for package in ("config", "model", "dataloader", "runtime", "utils"):
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    printing = [
        f"{os.path.relpath(path, ROOT)}:{node.lineno}"
        for path in files
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
    ]
    assert len(files) > 40 and not printing, printing
