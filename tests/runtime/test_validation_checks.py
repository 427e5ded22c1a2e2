"""The end-of-training validation check: a non-finite validation loss fails the run before the
export, a chance-level top-1 is a warning in the summary (issue #12)."""

import json
import logging
import math
import types

import pytest

from tests.helpers.cli import assert_one_line
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS, tiny_args


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
    from runtime.train import check_validation

    run, records = _fake_run()
    summary = {"global_step": 3}
    with pytest.raises(RunError, match=r"validation loss is nan after training .*not exported"):
        check_validation(summary, {"loss": math.nan, "top1": 0.0}, run)
    assert records and records[0][0] == []
    assert any("at or below chance (1/10 = 0.1000)" in w for w in records[0][1]["warnings"])


def test_chance_level_top1_is_a_warning_in_the_summary(caplog):
    from runtime.train import check_validation

    run, _ = _fake_run(num_classes=4)
    summary = {}
    with caplog.at_level(logging.WARNING):
        check_validation(summary, {"loss": 1.4, "top1": 0.25}, run)
    assert summary["warnings"] == [
        "validation top-1 0.2500 is at or below chance (1/4 = 0.2500): the model has not "
        "learned; check --lr_init and the labels"
    ]
    summary = {}
    check_validation(summary, {"loss": 0.4, "top1": 0.9}, run)
    assert "warnings" not in summary


def test_export_does_not_happen_after_a_nan_validation(run_main, tmp_path, monkeypatch):
    """End to end: a NaN validation loss exits 1 in one line and writes no model.weights.h5."""
    from runtime import train

    def nan_eval(self, desc):
        return {"top1": 0.0, "top5": 0.5, "loss": math.nan}

    monkeypatch.setattr(train.TrainRun, "evaluate", nan_eval)
    model_dir = tmp_path / "run"
    code, err = run_main(
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
