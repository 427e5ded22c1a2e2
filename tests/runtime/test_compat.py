"""runtime/compat.py: the one module that touches private Keras/TF attributes checks them."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from runtime import compat, distribute


def test_skip_all_reduce_takes_effect():
    """The patched method is on Keras' live update path and passes gradients through."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        var = keras.Variable(np.zeros(3, "float32"))
        optimizer = keras.optimizers.SGD(1.0)
        optimizer.build([var])
    compat.skip_optimizer_all_reduce(optimizer)
    patched, calls = optimizer._all_reduce_sum_gradients, []

    def spy(grads_and_vars):
        calls.append(1)
        return patched(grads_and_vars)

    optimizer._all_reduce_sum_gradients = spy

    @tf.function
    def step():
        strategy.run(lambda: optimizer.apply([tf.fill([3], 2.0)], [var]))

    step()
    assert calls, "Keras no longer calls _all_reduce_sum_gradients: the patch does nothing"
    np.testing.assert_allclose(var.numpy(), [-2.0] * 3)


def test_skip_all_reduce_fails_in_one_line_when_keras_renames_it(monkeypatch):
    optimizer = keras.optimizers.SGD(1.0)
    for klass in type(optimizer).__mro__:
        if "_all_reduce_sum_gradients" in vars(klass):
            monkeypatch.delattr(klass, "_all_reduce_sum_gradients")
    with pytest.raises(
        compat.CompatError, match="no longer sums gradients through _all_reduce_sum_gradients"
    ):
        compat.skip_optimizer_all_reduce(optimizer)


def test_untested_versions_are_refused_unless_allowed(monkeypatch):
    compat.check_versions(keras.__version__, tf.__version__)
    with pytest.raises(
        compat.CompatError,
        match=r"keras 4\.0\.0 is untested .*"
        "EFFICIENTNET_ALLOW_UNTESTED=1",
    ):
        compat.check_versions("4.0.0", tf.__version__)
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "1")
    compat.check_versions("4.0.0", "3.0.0")


def test_tf_internals_are_there():
    assert hasattr(compat.coordination_config_pb2(), "CoordinatedJob")
    assert compat.eager_context().context().coordination_service is None


def test_worker_identity_reads_no_strategy_internals():
    """Chief and worker count come from the ClusterSpec, not from the strategy's attributes."""
    dist = distribute.Distribution.current({})
    assert dist.strategy is tf.distribute.get_strategy()
    assert dist.num_workers == 1
    assert dist.is_chief


def test_preemption_handler_accesses_are_checked(tmp_path):
    """The platform the handler acts on and its watcher threads, on TF 2.21's handler."""
    from tensorflow.python.distribute.failure_handling import failure_handling_util

    platforms = {p.name for p in failure_handling_util.PlatformDevice}
    assert set(compat.PASSIVE_PREEMPTION_PLATFORMS) <= platforms
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        None,
        tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "unused"), 1),
        termination_config=tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=lambda: False, exit_fn=lambda: None, grace_period=0
        ),
    )
    assert compat.preemption_handler_acts(handler)  # not a GCE CPU/TPU VM
    poller = handler._poll_termination_signal_thread
    compat.stop_preemption_watchers(handler)
    poller.join(timeout=5)
    assert not poller.is_alive()  # the thread polling the signal flag ended
    compat.stop_preemption_watchers(handler)  # again: nothing left to stop
    with pytest.raises(compat.CompatError, match="no _platform_device"):
        compat.preemption_handler_acts(object())
    with pytest.raises(compat.CompatError, match="no _poll_termination_signal_thread_should_stop"):
        compat.stop_preemption_watchers(object())
