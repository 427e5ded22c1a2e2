"""Metrics logging in NVIDIA DLLogger's JSON-lines format, plus a console progress bar.

DLLogger (github.com/NVIDIA/dllogger) is not on PyPI, so this module writes its exact format
itself; the logs stay readable by NVIDIA's tooling and by `scripts/plot_log.py`:

    DLLL {"timestamp": "1570716921.842053", "datetime": "2019-10-10 14:15:21.842053",
          "elapsedtime": "5.69", "type": "LOG", "step": [0, 5], "data": {"train.loss": 8.5}}

`step` is "PARAMETER" for the run configuration, `[epoch, step]` (or `[epoch]`,
`[epoch, step, eval_step]`) for progress and `[]` for the final summary. `timestamp` and
`elapsedtime` are strings, as DLLogger writes them. METADATA lines
(`{"type": "METADATA", "metric": ..., "metadata": {"unit": ..., "format": ...}}`) describe a
metric's unit and print format.

There is one logging path for metrics: a `MetricsLogger` fans each record out to its sinks (the
JSON file, a stdout sink filtered by verbosity, optional TensorBoard). `create_metrics_logger`
builds it for the chief only: other workers get a logger with no sinks, so they write nothing.

Every console line takes exactly one of four paths: messages (progress notes, warnings,
one-line results) go through `logging.getLogger(__name__)` to main.py's stderr handler, metric
records through a `MetricsLogger` (the `DLL` lines on stdout), progress through a
`utils.progress.ProgressBar` (stderr), and a mode's result block (a table or summary and where
its files went) through `print_result` (stdout, for the reader or a pipe); the runtime has no
other `print`.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, Any, Protocol

from utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)

Step = str | Sequence[int] | int


class Verbosity(enum.IntEnum):
    """DLLogger's verbosity levels: a sink shows a record when sink level >= record level."""

    OFF = -1
    DEFAULT = 0
    VERBOSE = 1


class Sink(Protocol):
    """Something that receives metric records (DLLogger calls these backends)."""

    verbosity: Verbosity

    def log(
        self,
        timestamp: datetime,
        elapsed: float,
        step: Step,
        data: Mapping[str, Any],
        global_step: int | None,
    ) -> None: ...

    def metadata(
        self, timestamp: datetime, elapsed: float, metric: str, meta: Mapping[str, Any]
    ) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _to_json_value(value: Any) -> Any:
    """Turn numpy / TF scalars and arrays into plain Python so `json.dumps` accepts them."""
    if hasattr(value, "numpy"):  # tf.Tensor / tf.Variable
        value = value.numpy()
    if hasattr(value, "tolist"):  # numpy scalar or array
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # Anything else (a dtype, a path object, an enum) is recorded by its text, never dropped.
    return str(value)


def _to_json_step(step: Step) -> str | list[int]:
    if isinstance(step, str):
        return step
    if isinstance(step, int):
        return [step]
    return [int(s) for s in step]


def format_step(step: Step) -> str:
    """Human-readable form of a DLLogger step, as NVIDIA's stdout backend prints it.

    Args:
      step: "PARAMETER", [] (summary), [epoch], [epoch, step] or [epoch, step, eval_step].

    Returns:
      e.g. "Epoch: 1 Step: 20" or "Summary:".
    """
    if isinstance(step, str):
        return step
    step = _to_json_step(step)
    if not step:
        return "Summary:"
    names = ("Epoch", "Step", "Eval step")
    return " ".join(f"{n}: {s}" for n, s in zip(names, step, strict=False))


def _drop_torn_tail(filename: str) -> None:
    """Truncate `filename` after its last newline (a killed writer's partial last line)."""
    if not os.path.isfile(filename):
        return
    with open(filename, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            logger.warning("dropped a torn last line of %s (the earlier run was killed)", filename)


def _keep_previous(filename: str) -> str | None:
    """Move a non-empty earlier log aside as `filename.1` (`.2`, ...) instead of truncating it.

    Returns:
      The new name of the earlier log, or None when there was none.
    """
    if not os.path.isfile(filename) or os.path.getsize(filename) == 0:
        return None
    index = 1
    while os.path.exists(f"{filename}.{index}"):
        index += 1
    kept = f"{filename}.{index}"
    os.replace(filename, kept)
    logger.info("earlier metrics log kept as %s", kept)
    return kept


class JSONStreamSink:
    """Writes `DLLL {json}` lines to a file, exactly as DLLogger's JSONStreamBackend.

    Each record is one `write` followed by a flush, so a killed run leaves only whole lines
    (except possibly a torn last line, which `read_log` skips and an appending sink drops).
    A new, non-appending sink never truncates: an earlier log is kept as `FILE.1`, `FILE.2`...
    """

    def __init__(
        self, filename: str, verbosity: Verbosity = Verbosity.VERBOSE, append: bool = False
    ) -> None:
        self.verbosity = verbosity
        self.filename = filename
        parent = os.path.dirname(os.path.abspath(filename))
        os.makedirs(parent, exist_ok=True)
        if not append:
            _keep_previous(filename)
        else:
            # A run killed mid-write may have left a torn last record: drop it before appending.
            _drop_torn_tail(filename)
        self._file: IO[str] | None = open(filename, "a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"metrics log {self.filename} is already closed")
        self._file.write("DLLL " + json.dumps(record) + "\n")
        self._file.flush()

    def log(self, timestamp, elapsed, step, data, global_step) -> None:  # noqa: D102
        # Key order matches DLLogger's LOG lines.
        self._write(
            {
                "timestamp": str(timestamp.timestamp()),
                "datetime": str(timestamp),
                "elapsedtime": str(elapsed),
                "type": "LOG",
                "step": _to_json_step(step),
                "data": _to_json_value(dict(data)),
            }
        )

    def metadata(self, timestamp, elapsed, metric, meta) -> None:  # noqa: D102
        # NOTE: DLLogger's METADATA lines carry no "step"/"data"; "metric" and "metadata" instead.
        self._write(
            {
                "timestamp": str(timestamp.timestamp()),
                "datetime": str(timestamp),
                "elapsedtime": str(elapsed),
                "type": "METADATA",
                "metric": metric,
                "metadata": _to_json_value(dict(meta)),
            }
        )

    def flush(self) -> None:  # noqa: D102
        if self._file is not None:
            self._file.flush()

    def drop_after(self, step: Sequence[int]) -> int:
        """Remove the progress records after `step` ([epoch, step] or [epoch]: after that epoch's
        steps) from the file: what a killed run logged past the checkpoint a resumed run starts
        from (it logs those steps again). Returns how many were removed (a warning says so)."""
        if self._file is None:
            raise ValueError(f"metrics log {self.filename} is already closed")
        self._file.close()
        with open(self.filename, encoding="utf-8") as f:
            lines = f.readlines()
        kept = [line for line in lines if not _logged_after(line, _step_key(step))]
        if len(kept) < len(lines):
            atomic_write_text(self.filename, "".join(kept))
            logger.warning(
                "%s: removed %d record(s) logged after step %s, where the run resumes",
                self.filename,
                len(lines) - len(kept),
                list(step),
            )
        self._file = open(self.filename, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return len(lines) - len(kept)

    def close(self) -> None:  # noqa: D102
        if self._file is not None:
            self._file.close()
            self._file = None


def _step_key(step: Sequence[int]) -> tuple[float, float]:
    """Order of progress steps: [e, s, ...] is step s of epoch e; [e] comes after e's steps."""
    return (step[0], step[1]) if len(step) > 1 else (step[0], math.inf)


def _logged_after(line: str, limit: tuple[float, float]) -> bool:
    if not line.startswith("DLLL "):
        return False
    try:
        record = json.loads(line[5:])
    except json.JSONDecodeError:
        return False
    step = record.get("step")
    return (
        record.get("type") == "LOG"
        and isinstance(step, list)
        and bool(step)
        and (_step_key(step) > limit)
    )


class StdOutSink:
    """Prints records as `DLL <datetime> - Epoch: 0 Step: 5 train.loss : 8.5660 ` lines.

    Units and number formats come from `metadata()` calls (`{"unit": "img/s",
    "format": ":.2f"}`), as in DLLogger's StdOutBackend.
    """

    def __init__(
        self, verbosity: Verbosity = Verbosity.DEFAULT, stream: IO[str] | None = None
    ) -> None:
        self.verbosity = verbosity
        self._stream = stream
        self._meta: dict[str, dict[str, Any]] = {}

    def _format(self, metric: str, value: Any) -> str:
        meta = self._meta.get(metric, {})
        unit = meta.get("unit", "")
        # NOTE: DLLogger prints unformatted values; 5 significant digits keep lines readable.
        default = "{:.5g}" if isinstance(value, float) else "{}"
        fmt = "{" + meta["format"] + "}" if "format" in meta else default
        try:
            text = fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
        return f"{metric} : {text} {unit}".rstrip()

    def log(self, timestamp, elapsed, step, data, global_step) -> None:  # noqa: D102
        stream = self._stream or sys.stdout
        if step == "PARAMETER":
            # The whole config on one line is unreadable; the JSON file keeps it.
            body = f"{len(data)} parameters logged"
        else:
            body = " ".join(self._format(k, v) for k, v in data.items())
        stream.write(f"DLL {timestamp} - {format_step(step)} {body}\n")
        stream.flush()

    def metadata(self, timestamp, elapsed, metric, meta) -> None:  # noqa: D102
        self._meta.setdefault(metric, {}).update(meta)

    def flush(self) -> None:  # noqa: D102
        (self._stream or sys.stdout).flush()

    def close(self) -> None:  # noqa: D102
        self.flush()


class TensorBoardSink:
    """Writes numeric metrics of progress records as `tf.summary.scalar` at their global step.

    Only records logged with a `global_step` are written (TensorBoard needs one monotonic
    x-axis; `[epoch, step]` alone is not one). PARAMETER records become one text summary.
    """

    def __init__(self, logdir: str, verbosity: Verbosity = Verbosity.VERBOSE) -> None:
        import tensorflow as tf  # noqa: PLC0415 - only needed when TensorBoard is on

        self._tf = tf
        self.verbosity = verbosity
        self._writer = tf.summary.create_file_writer(logdir)

    def log(self, timestamp, elapsed, step, data, global_step) -> None:  # noqa: D102
        tf = self._tf
        with self._writer.as_default():
            if step == "PARAMETER":
                text = json.dumps(_to_json_value(dict(data)), indent=1, sort_keys=True)
                tf.summary.text("parameters", "```\n" + text + "\n```", step=0)
                return
            if global_step is None:
                return
            for name, value in data.items():
                value = _to_json_value(value)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(name, float(value), step=int(global_step))

    def metadata(self, timestamp, elapsed, metric, meta) -> None:  # noqa: D102
        return

    def flush(self) -> None:  # noqa: D102
        self._writer.flush()

    def close(self) -> None:  # noqa: D102
        self._writer.close()


class MetricsLogger:
    """Fans metric records out to sinks; the one metrics path of the application.

    Args:
      sinks: where records go; an empty list makes every call a no-op (non-chief workers).
    """

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self._start = datetime.now()

    @property
    def enabled(self) -> bool:
        """True when at least one sink receives records (false on non-chief workers)."""
        return bool(self.sinks)

    def log(
        self,
        step: Step,
        data: Mapping[str, Any],
        verbosity: Verbosity = Verbosity.DEFAULT,
        global_step: int | None = None,
    ) -> None:
        """Record metrics.

        Args:
          step: "PARAMETER", [epoch, step] for progress, [epoch] per epoch, [] for the summary.
          data: metric name -> value (numpy / TF scalars are converted).
          verbosity: DEFAULT records reach every sink; VERBOSE ones skip the stdout sink.
          global_step: the optimizer step, the x-axis for TensorBoard.
        """
        if not self.sinks:
            return
        now = datetime.now()
        elapsed = (now - self._start).total_seconds()
        for sink in self.sinks:
            if sink.verbosity >= verbosity:
                sink.log(now, elapsed, step, data, global_step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run configuration as one PARAMETER line."""
        self.log("PARAMETER", params)

    def metadata(self, metric: str, meta: Mapping[str, Any]) -> None:
        """Describe a metric, e.g. `metadata("train.loss", {"format": ":.4f"})`."""
        if not self.sinks:
            return
        now = datetime.now()
        elapsed = (now - self._start).total_seconds()
        for sink in self.sinks:
            sink.metadata(now, elapsed, metric, meta)

    def drop_after(self, step: Sequence[int]) -> int:
        """Remove the progress records after `step` from the JSON log (see JSONStreamSink);
        returns how many were removed."""
        return sum(s.drop_after(step) for s in self.sinks if hasattr(s, "drop_after"))

    def flush(self) -> None:
        """Flush every sink."""
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        """Flush and close every sink; further records raise (file) or are dropped."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_metrics_logger(
    log_path: str | None,
    is_chief: bool = True,
    tensorboard_dir: str | None = None,
    stdout_verbosity: Verbosity = Verbosity.DEFAULT,
    append: bool = False,
    stream: IO[str] | None = None,
) -> MetricsLogger:
    """Build the run's metrics logger: JSON file + stdout + optional TensorBoard, chief only.

    Args:
      log_path: the DLLogger JSON file (e.g. `model_dir/log.json`), or None for no file.
      is_chief: only the chief writes; other workers get a logger without sinks so that
        several workers never interleave lines in one file.
      tensorboard_dir: TensorBoard event directory, or None to leave TensorBoard off.
      stdout_verbosity: OFF to silence the console sink, VERBOSE to show every record.
      append: append to an existing log (resumed runs) instead of moving it aside as
        `log_path.1` (`.2`, ...).
      stream: console stream (default sys.stdout at write time).

    Returns:
      A MetricsLogger; use it as a context manager or call `close()` at the end.
    """
    if not is_chief:
        return MetricsLogger([])
    sinks: list[Sink] = []
    if log_path:
        sinks.append(JSONStreamSink(log_path, append=append))
    if stdout_verbosity != Verbosity.OFF:
        sinks.append(StdOutSink(stdout_verbosity, stream=stream))
    if tensorboard_dir:
        sinks.append(TensorBoardSink(tensorboard_dir))
    return MetricsLogger(sinks)


def read_log(path: str) -> list[dict[str, Any]]:
    """Parse a DLLogger JSON-lines file.

    Lines without the `DLLL ` prefix are ignored (DLLogger files may be mixed with other
    output); a torn final line of a killed run is skipped with a warning.

    Args:
      path: the log file.

    Returns:
      The records in file order, each the decoded JSON dict.

    Raises:
      ValueError: a complete line that is not valid JSON (the file is corrupt, not torn).
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith("DLLL "):
            continue
        try:
            records.append(json.loads(line[5:]))
        except json.JSONDecodeError as err:
            if number == len(lines):  # no trailing newline: the writer was killed mid-line
                logger.warning("%s: skipping a torn last line", path)
                continue
            raise ValueError(f"{path}:{number}: not a DLLogger JSON line ({err})") from err
    return records


def print_result(text: str, stream: IO[str] | None = None) -> None:
    """Show a mode's result block on stdout, once (the chief calls it; the log gets records).

    Args:
      text: the block: a table or summary and where its files went; lines joined by newlines.
      stream: where to write (default sys.stdout at call time).
    """
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()
