import math

import keras
import numpy as np
import pytest

from utils.schedules import SCHEDULES, WarmupDecaySchedule, build_schedule, scaled_learning_rate


def lr_at(schedule, step):
    return float(np.asarray(schedule(step)))


def test_lr_init_scales_with_global_batch():
    assert scaled_learning_rate(0.008, 128) == pytest.approx(0.008)
    assert scaled_learning_rate(0.008, 4096) == pytest.approx(0.256)


def test_warmup_is_linear_from_zero_to_peak():
    s = WarmupDecaySchedule("cosine", peak_lr=1.0, total_steps=100, warmup_steps=10)
    assert lr_at(s, 0) == 0.0
    assert lr_at(s, 5) == pytest.approx(0.5)
    assert lr_at(s, 10) == pytest.approx(1.0)


def test_exponential_is_staircase_after_warmup():
    s = WarmupDecaySchedule(
        "exponential", 1.0, total_steps=1000, warmup_steps=10, decay_steps=20, decay_rate=0.5
    )
    assert lr_at(s, 29) == pytest.approx(1.0)
    assert lr_at(s, 30) == pytest.approx(0.5)
    assert lr_at(s, 70) == pytest.approx(0.125)


def test_cosine_halfway_and_end():
    s = WarmupDecaySchedule("cosine", 2.0, total_steps=110, warmup_steps=10)
    assert lr_at(s, 60) == pytest.approx(1.0, abs=1e-6)
    assert lr_at(s, 110) == pytest.approx(0.0, abs=1e-6)
    assert lr_at(s, 500) == pytest.approx(0.0, abs=1e-6)


def test_piecewise_drops_three_times_then_stays():
    s = WarmupDecaySchedule("piecewise", 1.0, total_steps=1000, decay_steps=30, decay_rate=0.1)
    assert [lr_at(s, t) for t in (0, 29, 30, 60, 90, 300)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.01, 0.001, 0.001]
    )


def test_linearcosine_matches_tf1_formula():
    s = WarmupDecaySchedule("linearcosine", 1.0, total_steps=100)
    for t in (0, 25, 50, 100):
        p = t / 100
        expected = (1 - p) * 0.5 * (1 + math.cos(math.pi * p)) + 0.001
        assert lr_at(s, t) == pytest.approx(expected, rel=1e-5)


def test_build_schedule_converts_epochs_to_steps():
    s = build_schedule(
        "exponential",
        lr_init=0.008,
        global_batch_size=256,
        steps_per_epoch=10,
        max_epochs=5,
        warmup_epochs=1.5,
        decay_epochs=2.4,
        decay_rate=0.97,
    )
    assert (s.peak_lr, s.warmup_steps, s.decay_steps, s.total_steps) == (0.016, 15, 24, 50)
    assert set(SCHEDULES) == {"exponential", "cosine", "piecewise", "linearcosine"}


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown lr_decay 'step'.*exponential"):
        WarmupDecaySchedule("step", 1.0, total_steps=10)


def nvidia_exponential(step, peak, steps_per_epoch, warmup_epochs=5, decay_epochs=2.4, rate=0.97):
    """NVIDIA utils/learning_rate.py WarmupDecaySchedule over a staircase ExponentialDecay with
    decay_steps = decay_epochs * steps_per_epoch (optimizer_factory.build_learning_rate)."""
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return peak * step / warmup
    decay = keras.optimizers.schedules.ExponentialDecay(
        peak, decay_epochs * steps_per_epoch, rate, staircase=True
    )
    return float(decay(step - warmup))


def automl_exponential(step, peak, steps_per_epoch, warmup_epochs=5, decay_epochs=2.4, rate=0.97):
    """automl efficientnetv2/utils.py WarmupLearningRateSchedule: the decay counts from step 0."""
    warmup = int(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * step / warmup
    decay = keras.optimizers.schedules.ExponentialDecay(
        peak, decay_epochs * steps_per_epoch, rate, staircase=True
    )
    return float(decay(step))


def test_exponential_equals_nvidias_formula_at_every_drop():
    # 2.4 x 312 = 748.8 steps between drops: rounding it to 749 moved every drop from the fifth on.
    s = build_schedule(
        "exponential",
        lr_init=0.008,
        global_batch_size=128,
        steps_per_epoch=312,
        max_epochs=350,
        warmup_epochs=5,
        decay_epochs=2.4,
        decay_rate=0.97,
    )
    warmup = 5 * 312
    steps = [
        0,
        1,
        780,
        warmup - 1,
        warmup,
        warmup + 748,
        warmup + 749,
        warmup + 3744,
        warmup + 3745,
        100_000,
    ]
    for step in steps:
        assert lr_at(s, step) == pytest.approx(nvidia_exponential(step, 0.008, 312), rel=1e-6), step


def test_exponential_from_start_equals_automls_formula():
    s = build_schedule(
        "exponential",
        lr_init=0.008,
        global_batch_size=128,
        steps_per_epoch=312,
        max_epochs=350,
        warmup_epochs=5,
        decay_epochs=2.4,
        decay_rate=0.97,
        origin="start",
    )
    for step in (0, 1559, 1560, 2000, 50_000):
        assert lr_at(s, step) == pytest.approx(automl_exponential(step, 0.008, 312), rel=1e-6), step
    # Right after warm-up automl is already two drops (0.97 ** 2) below the peak.
    assert lr_at(s, 1560) == pytest.approx(0.008 * 0.97**2, rel=1e-6)


def test_cosine_from_start_spans_the_whole_run():
    s = WarmupDecaySchedule("cosine", 2.0, total_steps=110, warmup_steps=10, origin="start")
    assert lr_at(s, 55) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown lr_decay_origin 'end'; valid: warmup_end, start"):
        WarmupDecaySchedule("cosine", 1.0, 10, origin="end")
