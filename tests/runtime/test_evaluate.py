import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from runtime.evaluate import EvalTally, evaluate, latency_stats, make_eval_step
from tests.helpers import replica_worker
from tests.helpers.programs import evaluate_checks


def test_latency_percentiles_are_true_order_statistics():
    # 1..100 ms: linear-interpolated percentiles are known in closed form.
    stats = latency_stats([i / 1000 for i in range(1, 101)])
    assert stats["latency_mean_ms"] == pytest.approx(50.5)
    assert stats["latency_p50_ms"] == pytest.approx(50.5)
    assert stats["latency_p90_ms"] == pytest.approx(90.1)
    assert stats["latency_p95_ms"] == pytest.approx(95.05)
    assert stats["latency_p99_ms"] == pytest.approx(99.01)


def test_latency_percentiles_match_numpy_and_see_the_tail():
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(0.010, 0.012, 95), [0.5, 0.6, 0.7, 0.8, 0.9]])
    stats = latency_stats(lat.tolist())
    for p in (50, 90, 95, 99):
        assert stats[f"latency_p{p}_ms"] == pytest.approx(np.percentile(lat, p) * 1000)
    # The reference's "p99" (mean of the fastest 99%) hides the slow tail; ours does not.
    fastest_99_mean = np.sort(lat)[:99].mean() * 1000
    assert stats["latency_p99_ms"] > 5 * fastest_99_mean


def test_latency_stats_empty_is_nan():
    stats = latency_stats([])
    assert set(stats) == {
        "latency_mean_ms",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p95_ms",
        "latency_p99_ms",
    }
    assert all(math.isnan(v) for v in stats.values())


def _linear_model(num_classes=7, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def _numpy_reference(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = -logp[np.arange(len(labels)), labels].mean()
    order = np.argsort(-logits, axis=-1)
    top1 = (order[:, 0] == labels).mean()
    top5 = np.any(order[:, :5] == labels[:, None], axis=-1).mean()
    return top1, top5, loss


def test_evaluate_matches_numpy_and_counts_partial_batch():
    model = _linear_model()
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (10, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, 7, 10)
    onehot = np.eye(7, dtype="float32")[labels]
    ds = tf.data.Dataset.from_tensor_slices((images, onehot)).batch(4)  # 4, 4, 2
    got = evaluate(model, ds, progress=False)
    top1, top5, loss = _numpy_reference(model.predict(images, verbose=0), labels)
    assert got["top1"] == pytest.approx(top1)
    assert got["top5"] == pytest.approx(top5)
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["num_images"] == 10 and got["num_steps"] == 3
    # Step 0 is warm-up and step 2 is a partial batch: exactly one timed batch.
    assert got["latency_p50_ms"] == got["latency_p99_ms"] == got["latency_mean_ms"] > 0
    assert got["images_per_sec"] > 0
    assert got["images_per_sec_per_device"] == got["images_per_sec"]


def test_evaluate_integer_labels_num_steps_and_reused_step():
    model = _linear_model(num_classes=3)
    images = np.ones((6, 4, 4, 3), "float32")
    labels = np.array([0, 1, 2, 0, 1, 2])
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2).repeat()
    step = make_eval_step(model, tf.distribute.get_strategy(), top_k=3)
    got = evaluate(model, ds, num_steps=5, warmup_steps=2, progress=False, eval_step=step)
    assert got["num_steps"] == 5 and got["num_images"] == 10
    assert got["top5"] == 1.0  # top-k is capped at the number of classes
    assert not math.isnan(got["latency_p90_ms"])


def test_constant_model_scores_zero_not_hundred():
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(10, kernel_initializer="zeros")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    ds = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 4, 4, 3), "float32"), np.eye(10, dtype="float32")[np.arange(8)])
    ).batch(4)
    got = evaluate(model, ds, progress=False)
    assert got["top1"] == 0.0 and got["top5"] == 0.0
    assert got["loss"] == pytest.approx(math.log(10), rel=1e-5)


def test_empty_dataset_is_an_error():
    model = _linear_model()
    ds = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 4, 4, 3), "float32"), np.zeros((0, 7), "float32"))
    ).batch(4)
    with pytest.raises(ValueError, match="evaluation dataset is empty"):
        evaluate(model, ds, progress=False)


def test_run_eval_end_to_end_on_digits(tmp_path):
    from runtime.evaluate import run_eval
    from tests.helpers.tiny_run import save_random_checkpoint, tiny_params
    from utils.dllogger import read_log

    params = tiny_params(tmp_path, "eval", "--eval_batch_size", "128")
    model = save_random_checkpoint(params)
    (tmp_path / "log.json").write_text('DLLL {"type": "LOG", "step": [1, 1], "data": {}}\n')
    got = run_eval(params)
    assert got["weights"] == "raw" and got["checkpoint"].endswith("ckpt-1")
    assert got["num_images"] == 360  # 20% of scikit-learn's 1797 digits
    assert 0.0 <= got["top1"] <= got["top5"] <= 1.0
    # Same weights, same data: the restored model reproduces the saved one.
    from dataloader import build_dataset
    from runtime.components import data_config

    again = evaluate(
        model, build_dataset(data_config(params, training=False), "validation"), progress=False
    )
    assert got["top1"] == pytest.approx(again["top1"])
    assert got["loss"] == pytest.approx(again["loss"], rel=1e-5)
    records = read_log(str(tmp_path / "log.json"))
    assert records[0]["step"] == [1, 1]  # earlier training lines are kept (appended)
    assert records[1]["step"] == "PARAMETER" and records[1]["data"]["mode"] == "eval"
    assert records[-1]["step"] == []
    assert records[-1]["data"]["val.top1"] == pytest.approx(got["top1"])
    assert records[-1]["data"]["val.latency_p99_ms"] == pytest.approx(got["latency_p99_ms"])


def test_eval_without_checkpoint_exits_1(tmp_path, capsys):
    import main
    from tests.helpers.tiny_run import tiny_args

    assert main.main(tiny_args(tmp_path, "eval")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"main.py: error: no checkpoint found in {tmp_path} "
        "(train first, or pass a checkpoint path)"
    )


def test_evaluate_under_mirrored_strategy_matches_one_device():
    """Two logical CPU replicas: global sums, not per-replica means (in the replica worker: devices
    must be configured before TensorFlow starts)."""
    proc = replica_worker.run(evaluate_checks.mirrored_evaluate)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, plain, distributed = json.loads(proc.stdout.strip().splitlines()[-1])
    for got in (plain, distributed):
        assert got["num_images"] == 22
        for key in ("top1", "top5", "loss"):
            assert got[key] == pytest.approx(one[key], rel=1e-5)
        assert got["images_per_sec_per_device"] == pytest.approx(got["images_per_sec"] / 2)


def test_empty_batch_of_a_finished_worker_sums_to_zero():
    # MultiWorkerMirroredStrategy feeds empty batches to a worker whose validation shard ended
    # first; TF's CPU convolution cannot run the real model on them (see _batch_sums).
    from config.loader import load_config
    from model import build_model

    config = load_config(
        "config/efficientnet_v2/s_cfg.py", "width_coefficient=0.1,depth_coefficient=0.1"
    )
    model = build_model(config, num_classes=4)
    step = make_eval_step(model, tf.distribute.get_strategy(), top_k=3)
    empty = step(tf.zeros([0, 32, 32, 3]), tf.zeros([0, 4]))
    assert {k: float(v) for k, v in empty.items()} == {
        "loss_sum": 0.0,
        "top1_sum": 0.0,
        "top5_sum": 0.0,
        "count": 0.0,
    }
    full = step(tf.zeros([2, 32, 32, 3]), tf.one_hot([0, 1], 4))
    assert float(full["count"]) == 2.0 and math.isfinite(float(full["loss_sum"]))


def test_untimed_evaluation_warns_once_and_drops_nan_timing(caplog):
    from runtime.evaluate import warn_untimed, without_missing_timing

    warn_untimed.cache_clear()
    with caplog.at_level("WARNING", logger="runtime.evaluate"):
        for _ in range(3):  # three epochs of a one-batch validation set
            warn_untimed(1, 1)
    assert sum("were warm-up" in r.getMessage() for r in caplog.records) == 1
    results = {
        "top1": 0.5,
        "images_per_sec": float("nan"),
        "latency_p99_ms": float("nan"),
        "timed_steps": 0,
    }
    assert without_missing_timing(results) == {"top1": 0.5, "timed_steps": 0}


def batch_sums(count: float, top1: float) -> dict[str, float]:
    return {"loss_sum": 0.5 * count, "top1_sum": top1, "top5_sum": count, "count": count}


def test_an_untimed_evaluation_says_so_instead_of_nan():
    from runtime.evaluate import describe_speed, latency_stats

    untimed = {"images_per_sec": math.nan, **latency_stats([])}
    assert describe_speed(untimed) == "too few batches to time"
    assert describe_speed({}) == "too few batches to time"
    timed = {"images_per_sec": 1234.56, **latency_stats([0.002, 0.004])}
    assert describe_speed(timed) == "1234.6 images/s, p99 latency 3.98 ms"


def test_eval_tally_times_full_batches_after_warmup_only():
    tally = EvalTally(confusion_classes=None, warmup_steps=1)
    tally.add(batch_sums(4, 1), None, wait_s=1.0, step_s=9.0)  # warm-up: counted, not timed
    tally.add(batch_sums(4, 3), None, wait_s=0.5, step_s=1.5)
    tally.add(batch_sums(4, 2), None, wait_s=0.5, step_s=0.5)
    tally.add(batch_sums(2, 2), None, wait_s=0.1, step_s=0.1)  # smaller last batch: not timed
    results = tally.results(num_replicas=2)
    assert "confusion_matrix" not in results
    assert (results["num_images"], results["num_steps"], results["timed_steps"]) == (14, 4, 2)
    assert results["top1"] == pytest.approx(8 / 14) and results["top5"] == 1.0
    assert results["loss"] == pytest.approx(0.5)
    assert results["images_per_sec"] == pytest.approx(8 / 3.0)  # input wait included
    assert results["images_per_sec_per_device"] == pytest.approx(4 / 3.0)
    assert results["latency_mean_ms"] == pytest.approx(1000.0)  # input wait excluded


def test_eval_tally_sums_the_confusion_matrix():
    tally = EvalTally(confusion_classes=2, warmup_steps=0)
    for step in ([[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 2.0]]):
        tally.add(batch_sums(2, 1), tf.constant(step), wait_s=0.0, step_s=0.0)
    results = tally.results(num_replicas=1)
    np.testing.assert_array_equal(results["confusion_matrix"], [[1, 1], [1, 2]])
    assert results["confusion_matrix"].dtype == np.int64
    assert math.isnan(results["images_per_sec"])  # no wall time measured
