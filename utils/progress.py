"""A console progress bar with rate and ETA (stderr): the progress path of utils/dllogger.py's
four output paths (messages, metric records, progress, result blocks)."""

from __future__ import annotations

import collections
import math
import statistics
import sys
import time
from typing import IO, Any


def _plain(value: Any) -> Any:
    """A numpy / TF scalar as a Python number (shown after the ETA)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return value.item() if hasattr(value, "item") else value


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """A console progress bar with rate and ETA: `train 12/50 [#####.....] 3.1 it/s ETA 00:12`.

    The ETA is the median time per step of the last `ETA_WINDOW` updates times the steps left;
    the first update is left out (it includes tracing / XLA compilation, which made a job of
    seconds show an ETA of hours), so the ETA is unknown (--:--) until the second update.

    On a terminal it redraws one line; elsewhere (log files, CI) it prints a full line at most
    every `min_interval` seconds and at the end, so logs stay short.

    Args:
      total: number of steps, or None when unknown (no bar, no ETA).
      desc: label at the start of the line.
      enabled: False on non-chief workers (nothing is printed).
      stream: where to draw (default sys.stderr at construction).
      min_interval: seconds between redraws (at least 10 s off a terminal).
      width: characters of the bar.
      initial: steps done before (a resumed epoch); the rate counts only the steps after.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        enabled: bool = True,
        stream: IO[str] | None = None,
        min_interval: float = 0.5,
        width: int = 30,
        initial: int = 0,
    ) -> None:
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self.min_interval = min_interval if self._tty else max(min_interval, 10.0)
        self.width = width
        self.n = self.initial = initial
        self.postfix: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._last_draw = -math.inf
        self._closed = False
        self._drawn_n: int | None = None
        self._last_update = self._start
        self._step_times: collections.deque[float] = collections.deque(maxlen=self.ETA_WINDOW)

    ETA_WINDOW = 50

    def eta_seconds(self) -> float:
        """Seconds left: median seconds per step of recent updates (not the first) x steps left;
        inf when unknown."""
        if not self.total or not self._step_times:
            return math.inf
        return statistics.median(self._step_times) * max(self.total - self.n, 0)

    def render(self) -> str:
        """The current line, without carriage return or newline."""
        elapsed = time.perf_counter() - self._start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            filled = int(self.width * min(self.n, self.total) / self.total)
            parts.append(f"{self.n}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}]")
        else:
            parts.append(f"{self.n}")
        parts.append(f"{rate:.2f} it/s")
        parts.append(f"elapsed {_format_duration(elapsed)}")
        if self.total:
            parts.append(f"ETA {_format_duration(self.eta_seconds())}")
        parts.extend(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items()
        )
        return " ".join(parts)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by `n` steps; keyword values (loss=..., lr=...) are shown after the ETA."""
        now = time.perf_counter()
        if self.n > self.initial and n > 0:
            self._step_times.append((now - self._last_update) / n)
        self._last_update = now
        self.n += n
        self.postfix.update({k: _plain(v) for k, v in postfix.items()})
        if not self.enabled:
            return
        if now - self._last_draw >= self.min_interval:
            self._draw(final=False)
            self._last_draw = now

    def _draw(self, final: bool) -> None:
        self._drawn_n = self.n
        line = self.render()
        if self._tty:
            # \x1b[K clears what a longer previous line left on the right.
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state once and end the line."""
        # Off a terminal, a line already showing the final count is not printed twice.
        if self.enabled and not self._closed and (self._tty or self._drawn_n != self.n):
            self._draw(final=True)
        self._closed = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
