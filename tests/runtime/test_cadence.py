"""runtime/cadence.py: when training checkpoints (every N epochs, N steps, M minutes)."""

from runtime import cadence
from runtime.cadence import CheckpointCadence, after_step
from runtime.checkpoint import Position
from runtime.distribute import Distribution

ONE_PROCESS = Distribution(strategy=None)  # one worker: no all-reduce is needed


def test_epochs_and_steps():
    every = CheckpointCadence(every_epochs=5, max_epochs=12, every_steps=300)
    assert [d for d in range(1, 13) if every.epoch_due(d)] == [5, 10, 12]  # and the last
    due = [s for s in range(1, 1001) if every.step_due(s, s % 100, ONE_PROCESS)]
    assert due == [300, 600, 900]  # steps of the run, whatever the epoch
    assert not CheckpointCadence(every_epochs=1, max_epochs=2).step_due(300, 0, ONE_PROCESS)


def test_minutes_are_read_every_check_steps(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(cadence.time, "monotonic", lambda: clock[0])
    every = CheckpointCadence(every_epochs=5, max_epochs=9, every_minutes=30, check_every=100)
    clock[0] += 30 * 60 - 1
    assert not every.step_due(100, 100, ONE_PROCESS)
    clock[0] += 2
    assert not every.step_due(101, 101, ONE_PROCESS)  # the clock is read at log steps only
    assert every.step_due(200, 200, ONE_PROCESS)
    every.saved()
    clock[0] += 60
    assert not every.step_due(300, 300, ONE_PROCESS)
    assert not CheckpointCadence(5, 9, every_minutes=0).step_due(100, 100, ONE_PROCESS)


def test_the_last_step_of_an_epoch_is_the_start_of_the_next():
    assert after_step(0, 7, 10) == Position(0, 7)
    assert after_step(2, 10, 10) == Position(3, 0)
    assert str(Position(0, 7)) == "epoch 1 step 7" and str(Position(3, 0)) == "end of epoch 3"
