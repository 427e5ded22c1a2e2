"""scripts/allreduce_table.py: ring all-reduce volume from real trainable-parameter counts."""

from __future__ import annotations

import json

import pytest

from scripts.allreduce_table import main, markdown, ring_bytes_per_replica


@pytest.mark.parametrize("replicas, sent", [(1, 0.0), (2, 100.0), (4, 150.0), (8, 175.0)])
def test_ring_bytes(replicas, sent):
    assert ring_bytes_per_replica(100.0, replicas) == pytest.approx(sent)


def test_b0_row_from_the_built_model(capsys):
    assert main(["--format", "json", "--replicas", "8", "config/efficientnet_v1/b0_cfg.py"]) == 0
    out = capsys.readouterr()
    (row,) = json.loads(out.out)
    # Keras applications' EfficientNetB0 (1000 classes) has 5,288,548 trainable parameters.
    assert row["trainable_params"] == 5_288_548
    assert row["grad_mb_fp32"] == pytest.approx(5_288_548 * 4 / 1e6)
    assert row["ring_mb_fp16_8"] == pytest.approx(5_288_548 * 2 * 1.75 / 1e6)
    table = markdown([row], [8])
    assert "| efficientnet-b0 | 5,288,548 | 21.2 | 10.6 | 37.0 | 18.5 |" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--replicas", "8,x"], "comma-separated integers"),
        (["config/nope_cfg.py"], "nope_cfg.py"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    # In-process: the script's entry point is run as a script in test_b0_row_from_the_built_model.
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
