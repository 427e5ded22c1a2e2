"""utils/progress.py: the console progress bar (rate, ETA, one redrawn line on a terminal)."""

import io
import math

import numpy as np
import pytest

from utils.progress import ProgressBar


def test_progress_bar_eta_and_output():
    out = io.StringIO()
    bar = ProgressBar(total=4, desc="train", stream=out, min_interval=0.0)
    assert bar.eta_seconds() == math.inf
    for _ in range(2):
        bar.update(loss=np.float32(1.5))
    assert 0 <= bar.eta_seconds() < 60
    bar.update(2)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("train 4/4 [" + "#" * 30 + "]")
    assert "ETA 00:00" in lines[-1] and "loss=1.5" in lines[-1]
    once = io.StringIO()
    with ProgressBar(total=2, stream=once) as bar:
        bar.update(2)  # drawn at once (first update), so closing adds no duplicate line
    assert len(once.getvalue().splitlines()) == 1
    silent = io.StringIO()
    with ProgressBar(total=3, stream=silent, enabled=False) as quiet:
        quiet.update(3)
    assert silent.getvalue() == ""


def test_progress_bar_redraws_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    with ProgressBar(total=3, desc="eval", stream=term, min_interval=0.0) as bar:
        for _ in range(3):
            bar.update(1)
    text = term.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1 and text.endswith("\x1b[K\n")
    assert "eval 3/3" in text.split("\r")[-1]


def test_progress_bar_eta_is_the_median_of_recent_steps_without_the_first(monkeypatch):
    """Step 1 (tracing) takes 100 s, then 1 s per step (one 30 s outlier): ETA = 1 s x steps left."""
    from utils import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    bar = ProgressBar(total=10, stream=io.StringIO(), enabled=False)
    clock[0] += 100.0
    bar.update()
    assert bar.eta_seconds() == math.inf  # only the tracing step so far: unknown
    for seconds in (1.0, 1.0, 30.0, 1.0):
        clock[0] += seconds
        bar.update()
    assert bar.eta_seconds() == pytest.approx(5 * 1.0)
    clock[0] += 2.0
    bar.update(2)  # 1 s per step over a 2-step update
    assert bar.eta_seconds() == pytest.approx(3 * 1.0)


def test_a_resumed_epoch_starts_at_its_step_and_rates_only_the_new_steps(monkeypatch):
    """Before: a resumed epoch's bar started at 0 and reached its total only after the steps
    trained before the stop were counted again."""
    from utils import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    bar = ProgressBar(total=10, desc="epoch 2/3", stream=out, min_interval=0.0, initial=6)
    clock[0] += 2.0
    bar.update()
    clock[0] += 2.0
    bar.update()
    bar.close()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("epoch 2/3 8/10 [" + "#" * 24)
    assert "0.50 it/s" in last  # 2 steps in 4 s, not 8
    assert bar.eta_seconds() == pytest.approx(2 * 2.0)
