"""scripts/bench_model.py and bench_step.py run every TensorFlow variant end to end on a tiny model and rejects
bad arguments (it prints measurements; nothing here checks a speed)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.helpers import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_model = _load("bench_model")

TINY = [
    "--cfg",
    "config/efficientnet_v1/b0_cfg.py",
    "--mparams",
    "width_coefficient=0.1,depth_coefficient=0.1,num_classes=10",
    "--image_size",
    "32",
    "--batch_size",
    "2",
    "--warmup",
    "1",
    "--rounds",
    "2",
    "--steps",
    "1",
]


def _rows(text: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells[1:]
        for line in text.splitlines()
        if line.startswith("| ")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }


def _check_tables(out: str, variants: list[str]) -> dict[str, list[str]]:
    train, infer = out.split("### infer")
    rows = _rows(train)
    for name in variants:
        median, ratio, rss, rounds = rows[name]
        assert float(median) > 0
        assert len(rounds.split()) == 2
    # The runtime step is training only.
    assert "runtime" not in _rows(infer) and "ours" in _rows(infer)
    return rows


@pytest.mark.slow
def test_tiny_run_prints_both_tables(capsys):
    variants = ["runtime", "ours", "ours_keras_bn"]
    assert bench_model.main([*TINY, "--variants", ",".join(variants)]) == 0
    rows = _check_tables(capsys.readouterr().out, variants)
    assert rows["ours"][1] == "-"  # no keras.applications row to divide by


@pytest.mark.slow
def test_tiny_run_against_keras_applications(capsys):
    variants = ["runtime", "ours", "keras.applications"]
    assert bench_model.main([*TINY, "--variants", ",".join(variants)]) == 0
    rows = _check_tables(capsys.readouterr().out, variants)
    assert rows["keras.applications"][1] == "1.000" and float(rows["ours"][1]) > 0


def test_peak_rss_comes_from_a_child_process(capsys):
    assert bench_model.main([*TINY, "--variants", "ours", "--phases", "infer", "--rss"]) == 0
    rss = _rows(capsys.readouterr().out)["ours"][2]
    assert 0.1 < float(rss) < 24


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "resnet"], "unknown variant or phase resnet"),
        (["--phases", "eval"], "unknown variant or phase eval"),
        (["--reference", "NoSuchNet"], "keras.applications has no 'NoSuchNet'"),
        (["--cfg", "config/nope.py"], "no config file config/nope.py"),
    ],
)
def test_bad_arguments_exit_2(args, message, capsys):
    assert bench_model.main([*TINY, *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_step_breakdown_prints_every_variant(capsys):
    bench_step = _load("bench_step")
    assert (
        bench_step.main(
            [
                "--mparams",
                "width_coefficient=0.1,depth_coefficient=0.1,num_classes=10",
                "--image_size",
                "32",
                "--batch_size",
                "2",
                "--rounds",
                "2",
                "--steps",
                "1",
            ]
        )
        == 0
    )
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 7 and rows[bench_step.BARE][1] == "1.000"
    assert all(
        float(cells[0]) > 0 and len(cells[2].split()) == 2
        for name, cells in rows.items()
        if name != "step"
    )
    assert bench_step.main(["--rounds", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
