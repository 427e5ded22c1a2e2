"""scripts/benchmark_table.py and scripts/scaling_model.py: tables, failed points, scaling model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import main
from scripts import benchmark_table as bt
from scripts.scaling_model import allreduce_seconds, predict
from tests.helpers.tiny_run import TINY_MPARAMS

TINY = [
    "--mparams",
    TINY_MPARAMS,
    "--steps",
    "2",
    "--warmup_steps",
    "1",
    "--batch",
    "4",
    "--device_kind",
    "cpu",
]


def _point(model, devices, images_per_sec, precision="fp32", batch=4, step_ms=None):
    step_ms = step_ms if step_ms is not None else devices * batch / images_per_sec * 1e3
    return {
        "model": model,
        "precision": precision,
        "devices": devices,
        "batch": batch,
        "result": {"images_per_sec": images_per_sec, "step_time_mean_ms": step_ms},
    }


def test_weak_scaling_eta_and_failed_cells():
    points = [
        _point("b0", 1, 100.0),
        _point("b0", 2, 150.0),
        _point("b0", 4, 1.0),
        _point("s", 1, 50.0),
    ]
    points[2]["result"] = {"error": "out of memory"}
    bt.add_derived(points)
    assert points[0]["weak_scaling"] == 1.0
    assert points[1]["weak_scaling"] == pytest.approx(150.0 / (2 * 100.0))
    assert points[1]["eta_h_per_epoch"] == pytest.approx(1_281_167 / 150.0 / 3600)
    assert "weak_scaling" not in points[2]
    infos = {"b0": {"params": 5_288_548, "gflops": 0.8}, "s": {"params": 21_612_360, "gflops": 5.7}}
    text = bt.tables(points, infos, [], [1, 2, 4])
    throughput, scaling, eta = text.split("### ")[1:]
    assert "| b0 | 5.29 | 0.800 | fp32 | 4 | 100.0 | 150.0 | failed |" in throughput
    assert "| s | 21.61 | 5.700 | fp32 | 4 | 50.0 |  |  |" in throughput  # not run: empty
    assert "| b0 | 5.29 | 0.800 | fp32 | 4 | 1.000 | 0.750 | failed |" in scaling
    assert f"| {1_281_167 / 150.0 / 3600:.2f} |" in eta


def test_scaling_model_ring_formula_and_overlap():
    grad = 21.2e6
    # 8 GPUs in one node: intra bandwidth; 16: the slower inter-node links.
    assert allreduce_seconds(grad, 8, 100.0, 10.0, 8) == pytest.approx(2 * 7 / 8 * grad / 100e9)
    assert allreduce_seconds(grad, 16, 100.0, 10.0, 8) == pytest.approx(2 * 15 / 16 * grad / 10e9)
    assert allreduce_seconds(grad, 1, 100.0, 10.0, 8) == 0.0
    t1 = 0.5
    (row,) = predict(t1, 256, grad, [16], 100.0, 10.0, 8, overlap=0.0)
    t_ar = 2 * 15 / 16 * grad / 10e9
    assert row["step_ms"] == pytest.approx((t1 + t_ar) * 1e3)
    assert row["images_per_sec"] == pytest.approx(16 * 256 / (t1 + t_ar))
    assert row["weak_scaling"] == pytest.approx(t1 / (t1 + t_ar))
    # The all-reduce fits in the overlapped part of the step: perfect scaling.
    (hidden,) = predict(t1, 256, grad, [16], 100.0, 10.0, 8, overlap=0.5)
    assert hidden["weak_scaling"] == 1.0


def test_auto_batch_is_the_published_batch_scaled_to_memory():
    assert [bt.auto_batch(f"b{i}", 32.0) for i in range(8)] == [256, 192, 128, 64, 32, 16, 12, 8]
    assert bt.auto_batch("b0", 80.0) == 256
    assert bt.auto_batch("b0", 16.0) == 128 and bt.auto_batch("b7", 2.0) == 1


def test_devices_map_to_gpus_or_logical_cpus(tmp_path):
    args, extra = bt.parse_args(
        ["--synthetic", "--out_dir", str(tmp_path / "o"), "--", "--no-use_xla"]
    )
    cpu = bt.main_args("b0", "amp", 2, 8, False, args, "d", extra)
    gpu = bt.main_args("b0", "fp32", 2, 8, True, args, "d", extra)
    assert cpu[cpu.index("--num_gpus") + 1] == "0" and cpu[cpu.index("--cpu_replicas") + 1] == "2"
    assert gpu[gpu.index("--num_gpus") + 1] == "2" and "--cpu_replicas" not in gpu
    assert "--use_amp" in cpu and "--no-use_tf32" in gpu and cpu[-1] == "--no-use_xla"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "b9", "--synthetic"], "bad value(s) ['b9']"),
        (["--devices", "1,0", "--synthetic"], "bad value(s) [0]"),
        (["--precision", "fp8", "--synthetic"], "choices: fp32, tf32, amp"),
        (["--batch", "big", "--synthetic"], "--batch must be 'auto' or an integer"),
        (["--synthetic", "--overlap", "2"], "--overlap must be in [0, 1]"),
        (["--synthetic", "--inter_bandwidth", "0"], "bandwidths must be > 0"),
        (["--data_dir", "/no/such/dir"], "--data_dir /no/such/dir is not a folder"),
        ([], "one of the arguments --synthetic --data_dir is required"),
    ],
)
def test_bad_arguments_exit_2_write_nothing(tmp_path, capsys, argv, message):
    out_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        bt.main([*argv, "--out_dir", str(out_dir)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out_dir.exists()


def test_non_empty_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        bt.main(["--synthetic", "--out_dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "is not empty; pick a new folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]


def test_cpu_replicas_flag_is_checked(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main.main(
            [
                "--cfg",
                "config/efficientnet_v1/b0_cfg.py",
                "--cpu_replicas",
                "0",
                "--model_dir",
                str(tmp_path / "run"),
            ]
        )
    assert exc.value.code == 2
    assert "--cpu_replicas must be >= 1, got 0" in capsys.readouterr().err


def test_failed_points_are_reported_and_the_sweep_goes_on(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = bt.main(
        [
            "--models",
            "b0",
            "--devices",
            "1,2",
            "--synthetic",
            *TINY,
            "--out_dir",
            str(out_dir),
            "--",
            "--no_such_flag",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # every point failed
    assert "0/2 points measured, 2 failed" in captured.out
    assert captured.out.count("| fp32 | 4 | failed | failed |") == 3  # throughput, scaling, ETA
    doc = json.loads((out_dir / "benchmark_table.json").read_text())
    assert [p["devices"] for p in doc["points"]] == [
        1,
        2,
    ]  # the second point ran after the first failed
    for p in doc["points"]:
        assert "unrecognized argument(s): --no_such_flag" in p["result"]["error"]
        assert (out_dir / f"b0_fp32_{p['devices']}dev" / "main_output.log").exists()
    assert doc["models"]["b0"]["params"] > 0


@pytest.mark.slow
def test_two_tiny_models_on_one_and_two_logical_cpus(tmp_path):
    """The issue's check: all three tables with numbers (about 4 x 30-60 s on 2 busy cores)."""
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/benchmark_table.py",
            "--models",
            "b0,s",
            "--devices",
            "1,2",
            "--synthetic",
            *TINY,
            "--out_dir",
            str(out_dir),
            "--",
            "--no-use_xla",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out_dir / "benchmark_table.json").read_text())
    assert [(p["model"], p["devices"]) for p in doc["points"]] == [
        ("b0", 1),
        ("b0", 2),
        ("s", 1),
        ("s", 2),
    ]
    for p in doc["points"]:
        assert p["result"]["num_replicas"] == p["devices"]
        assert p["result"]["images_per_sec"] > 0 and p["eta_h_per_epoch"] > 0
    sections = proc.stdout.split("### ")[1:]
    assert len(sections) == 4  # throughput, weak scaling, ETA, scaling model
    for section in sections:
        rows = [line for line in section.splitlines() if line.startswith(("| b0 ", "| s "))]
        assert len(rows) == 2
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert all(cells) and "failed" not in cells
            float(cells[-1].split()[0])
    assert "2/4 points measured" not in proc.stdout and "4/4 points measured" in proc.stdout
