"""The README quick start (scripts/quickstart.sh), shortened: 2 epochs of 3 steps, plus a
SavedModel export; checks train_and_eval with EMA, the exports, the DLLogger log and predict's
output files. (Stages end to end: tests/runtime/test_train_e2e.py.)"""

import csv
import json
import os
import subprocess
import sys

import tensorflow as tf

from runtime.checkpoint import checkpoint_dir
from tests.helpers import ROOT
from utils.dllogger import read_log

STEPS = 3


def test_shortened_quickstart_trains_evaluates_exports_and_predicts(tmp_path):
    model_dir = tmp_path / "qs"
    env = {
        **os.environ,
        "SKIP_INSTALL": "1",
        "EPOCHS": "2",
        "PYTHON": sys.executable,
        "MODEL_DIR": str(model_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.run(
        [
            "bash",
            "scripts/quickstart.sh",
            "--steps_per_epoch",
            str(STEPS),
            "--log_steps",
            "2",
            "--export_SavedModel",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    records = read_log(str(model_dir / "log.json"))
    assert records[0]["step"] == "PARAMETER"
    assert records[0]["data"]["model"]["width_coefficient"] == 0.25
    steps = {
        tuple(r["step"]): r["data"]
        for r in records
        if r["type"] == "LOG" and isinstance(r["step"], list) and len(r["step"]) == 2
    }
    assert sorted(steps) == [(1, 2), (1, 3), (2, 2), (2, 3)]
    assert all(d["image_size"] == 32 and d["stage"] == 1 for d in steps.values())
    epochs = {
        r["step"][0]: r["data"]
        for r in records
        if r["type"] == "LOG" and isinstance(r["step"], list) and len(r["step"]) == 1
    }
    # EMA is on: the evaluation after each epoch is of the EMA weights, and its keys say so.
    assert set(epochs) == {1, 2} and all(0 <= e["val_ema.top1"] <= 1 for e in epochs.values())
    assert not any("val.top1" in e for e in epochs.values())
    summary = next(r["data"] for r in records if r.get("step") == [] and "global_step" in r["data"])
    assert summary["global_step"] == 2 * STEPS
    # Raw and EMA weights are both evaluated and the better one is exported.
    better = "ema" if summary["val_ema.top1"] >= summary["val.top1"] else "raw"
    assert summary["exported_weights"] == better
    assert summary["best.top1"] == max(summary["val_ema.top1"], summary["val.top1"])
    # The run ends with a short block on stdout, not the summary record (file only).
    assert "Summary: global_step" not in proc.stdout
    block = proc.stdout[proc.stdout.index("training done: 2 epochs") :].splitlines()
    assert block[2].split()[:3] == ["raw", "weights", f"{summary['val.top1']:.4f}"]
    assert block[3].split()[:3] == ["EMA", "weights", f"{summary['val_ema.top1']:.4f}"]
    assert (
        f"written to {model_dir / 'model.weights.h5'} and {model_dir / 'saved_model'}" in (block[4])
    )
    assert f"python main.py --mode eval --model_dir {model_dir}" in block[6]
    for name in (
        "params.json",
        "class_names.json",
        "model.weights.h5",
        "saved_model/saved_model.pb",
    ):
        assert (model_dir / name).is_file(), name
    assert json.load(open(model_dir / "params.json"))["use_xla"] is False  # CPU default
    # Numbered by the global step.
    latest = tf.train.latest_checkpoint(checkpoint_dir(str(model_dir)))
    assert latest.endswith(f"ckpt-{2 * STEPS}")

    with open(model_dir / "predictions.csv", newline="") as f:
        top1 = [r for r in csv.DictReader(f) if r["rank"] == "1"]
    assert sorted(r["file"] for r in top1) == sorted(os.listdir(model_dir / "digits_png"))
    assert len(top1) == 20 and all(r["class_name"] in "0123456789" for r in top1)
    assert "20 file(s) classified, 0 unreadable skipped" in proc.stdout
