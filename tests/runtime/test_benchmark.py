import json

import pytest

from runtime.benchmark import (
    format_table,
    run_inference_benchmark,
    run_training_benchmark,
    time_steps,
)
from tests.helpers.tiny_run import TINY_MPARAMS, TWO_BLOCKS, tiny_params
from utils.dllogger import read_log


def test_time_steps_excludes_warmup():
    calls = []
    times = time_steps(lambda: calls.append(1), warmup_steps=3, steps=4, progress=False)
    assert len(calls) == 7 and len(times) == 4
    assert all(t >= 0 for t in times)


def test_format_table_reports_oom_rows():
    rows = [
        {
            "batch_size": 8,
            "global_batch_size": 16,
            "images_per_sec": 100.0,
            "images_per_sec_per_device": 50.0,
            "latency_mean_ms": 1.0,
            "latency_p50_ms": 1.0,
            "latency_p90_ms": 2.0,
            "latency_p95_ms": 3.0,
            "latency_p99_ms": 4.0,
        },
        {"batch_size": 512, "global_batch_size": 1024, "error": "out of memory"},
    ]
    lines = format_table(rows, "latency").splitlines()
    assert lines[0].split() == [
        "batch",
        "global",
        "img/s",
        "img/s/dev",
        "mean",
        "ms",
        "p50",
        "ms",
        "p90",
        "ms",
        "p95",
        "ms",
        "p99",
        "ms",
    ]
    assert lines[1].split() == [
        "8",
        "16",
        "100.00",
        "50.00",
        "1.00",
        "1.00",
        "2.00",
        "3.00",
        "4.00",
    ]
    assert lines[2].split() == ["512", "1024", "out", "of", "memory"]


def _check_rows(rows, batch_sizes, prefix):
    assert [r["batch_size"] for r in rows] == list(batch_sizes)
    for row in rows:
        assert row["global_batch_size"] == row["batch_size"]  # one replica, no accumulation
        p = [row[f"{prefix}_p{q}_ms"] for q in (50, 90, 95, 99)]
        assert 0 < p[0] <= p[1] <= p[2] <= p[3]
        assert row["images_per_sec_per_device"] == row["images_per_sec"] > 0
    return rows


def test_training_benchmark_json_and_table(tmp_path, capsys):
    params = tiny_params(
        tmp_path,
        "training_benchmark",
        "--mparams",
        f"{TINY_MPARAMS},{TWO_BLOCKS}",  # the step is traced once per batch size
        "--dataset",
        "synthetic",
        "--benchmark_batch_sizes",
        "2,4",
        "--benchmark_steps",
        "3",
        "--benchmark_warmup_steps",
        "1",
    )
    result = run_training_benchmark(params)
    with open(tmp_path / "benchmark_training.json") as f:
        doc = json.load(f)
    assert result["path"] == str(tmp_path / "benchmark_training.json")
    assert (doc["mode"], doc["model"], doc["image_size"], doc["precision"]) == (
        "training_benchmark",
        "efficientnetv2-s",
        32,
        "float32",
    )
    assert (doc["warmup_steps"], doc["steps"], doc["num_replicas"]) == (1, 3, 1)
    for row in _check_rows(doc["results"], (2, 4), "step_time"):
        # images/s is the global batch over the mean timed step: the same measured steps.
        assert row["images_per_sec"] == pytest.approx(
            row["global_batch_size"] / (row["step_time_mean_ms"] / 1000), rel=1e-9
        )
    out = capsys.readouterr().out
    assert "training_benchmark: efficientnetv2-s at 32 px, float32, XLA off" in out
    assert f"results written to {tmp_path / 'benchmark_training.json'}" in out
    logged = [r for r in read_log(str(tmp_path / "log.json")) if r["step"] == []]
    assert [r["data"]["train.batch_size"] for r in logged] == [2, 4]
    # The benchmark trains but saves nothing.
    assert not (tmp_path / "checkpoints").exists()


def test_inference_benchmark_on_real_data(tmp_path):
    params = tiny_params(
        tmp_path,
        "inference_benchmark",
        "--benchmark_batch_sizes",
        "16,32",
        "--benchmark_steps",
        "4",
        "--benchmark_warmup_steps",
        "1",
    )
    run_inference_benchmark(params)
    with open(tmp_path / "benchmark_inference.json") as f:
        doc = json.load(f)
    assert (doc["mode"], doc["dataset"], doc["image_size"]) == ("inference_benchmark", "digits", 32)
    rows = _check_rows(doc["results"], (16, 32), "latency")
    assert all(r["timed_steps"] == 4 for r in rows)


def test_negative_warmup_exits_2(tmp_path, capsys):
    # The other benchmark flag errors are covered in tests/test_main.py.
    import main
    from tests.helpers.tiny_run import tiny_args

    with pytest.raises(SystemExit) as exc:
        main.main(
            tiny_args(tmp_path / "run", "training_benchmark", "--benchmark_warmup_steps", "-1")
        )
    assert exc.value.code == 2
    assert (
        capsys.readouterr().err == "main.py: error: --benchmark_warmup_steps must be >= 0, got -1\n"
    )
    assert not (tmp_path / "run").exists()  # nothing written


def test_out_of_memory_batch_size_is_reported_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import tensorflow as tf

    import runtime.benchmark as benchmark

    real_evaluate = benchmark.evaluate

    def evaluate_or_oom(model, dataset, **kwargs):
        if "batch 32" in kwargs["desc"]:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_evaluate(model, dataset, **kwargs)

    monkeypatch.setattr(benchmark, "evaluate", evaluate_or_oom)
    params = tiny_params(
        tmp_path,
        "inference_benchmark",
        "--dataset",
        "synthetic",
        "--benchmark_batch_sizes",
        "32,8",
        "--benchmark_steps",
        "2",
        "--benchmark_warmup_steps",
        "1",
    )
    rows = run_inference_benchmark(params)["results"]
    assert rows[0] == {"batch_size": 32, "global_batch_size": 32, "error": "out of memory"}
    assert rows[1]["batch_size"] == 8 and rows[1]["images_per_sec"] > 0
