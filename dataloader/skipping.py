"""Skip bad records without stopping an epoch; name each bad file once per run and count them.

Records that are empty, not an image or carry an out-of-range label are rejected by a check
before decoding. Records that still fail (corrupt or truncated JPEG data, unreadable files,
unparseable records) are dropped by `ignore_errors`; their origin (the file, or the TFRecord
shard) is found at the end of each pass over the data as the difference between the records
read from it and those rejected or produced.

What the log gets:
- each bad file once per run (per data set and data_dir, this process), with its path and
  reason: `folder/train: skipping /data/train/cat/broken.jpg: undecodable image data (corrupt
  or truncated)`; after `MAX_NAMED` files of one data set only the counts go on;
- the counts of a pass over the data: a pass that is read once (validation, eval) logs its
  line at its end (`folder/validation: pass done, skipped 1 of 19 records (1 undecodable)`);
  a repeated input (training) keeps the counts of its last finished pass for the training
  loop, which logs them once per epoch (`report_pending`). A pass without bad records logs
  nothing (DEBUG).

The counts live in `MutableHashTable`s, not `tf.Variable`s: a variable created while a
distribution strategy's scope is open would become a mirrored (per-device) variable. Each
table is updated by exactly one sequential pipeline stage, so read-modify-write is race-free.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping

import tensorflow as tf

logger = logging.getLogger(__name__)

OK, EMPTY, NOT_IMAGE, BAD_LABEL = 0, 1, 2, 3
REASONS = {EMPTY: "empty", NOT_IMAGE: "not an image", BAD_LABEL: "label out of range"}
UNDECODABLE = "undecodable"
# Bad files named per data set per run; the counts cover the rest.
MAX_NAMED = 20
_KEYS = ("read", "decoded", *REASONS.values())


class _RunRecord:
    """What this process has said about bad files, and the counts waiting for the epoch line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.named: dict[tuple, set[str]] = collections.defaultdict(set)
        self.capped: set[tuple] = set()
        self.pending: dict[str, dict[str, int]] = {}


_RUN = _RunRecord()


def check_record(image: tf.Tensor, label: tf.Tensor, num_classes: int, is_image_fn) -> tf.Tensor:
    """The reason code (OK, EMPTY, NOT_IMAGE, BAD_LABEL) for one parsed record.

    Args:
      image: scalar string of encoded bytes, or a decoded image (always accepted as an image).
      label: scalar int 0-based label.
      num_classes: labels must be in [0, num_classes).
      is_image_fn: bytes -> bool tensor, the magic-bytes check.

    Returns:
      Scalar int32 tensor.
    """
    bad_label = tf.logical_or(label < 0, label >= num_classes)
    if image.dtype != tf.string:
        return tf.where(bad_label, BAD_LABEL, OK)
    empty = tf.equal(tf.strings.length(image), 0)
    reason = tf.where(bad_label, BAD_LABEL, OK)
    reason = tf.where(tf.logical_not(is_image_fn(image)), NOT_IMAGE, reason)
    return tf.where(empty, EMPTY, reason)


def _table() -> tf.lookup.experimental.MutableHashTable:
    return tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, 0)


def _increment(table, key: tf.Tensor) -> tf.Tensor:
    key = tf.reshape(key, [1])
    return table.insert(key, table.lookup(key) + 1)


class SkipCounter:
    """Counts records read, rejected (per reason) and produced for one dataset, per origin too.

    Args:
      name: shown in log lines, e.g. "imagenet/train".
      origin_fn: raw record -> scalar string tensor, the file it comes from (the source's
        `origin`).
      report_passes: log each pass's counts at its end (an input read once); otherwise keep
        them for `report_pending` (a repeated training input).
      scope: what "once per run" is per, besides the name (the data directory).
    """

    def __init__(
        self,
        name: str,
        origin_fn: Callable[..., tf.Tensor],
        report_passes: bool = True,
        scope: str | None = None,
    ):
        self.name = name
        self.origin_fn = origin_fn
        self.report_passes = report_passes
        self.scope = (scope, name)
        with tf.device("/cpu:0"):
            self._counts = _table()
            self._read = _table()  # per origin, updated by count_read
            self._rejected = _table()  # per origin, updated by keep
            self._produced = _table()  # per origin, updated by count_produced

    def count_read(self, *element):
        """Pass-through map function counting records entering the pipeline (by origin too)."""
        ops = [
            _increment(self._counts, tf.constant("read")),
            _increment(self._read, self.origin_fn(*element)),
        ]
        with tf.control_dependencies(ops):
            out = tf.nest.map_structure(tf.identity, element)
        return out if len(out) > 1 else out[0]

    def count_produced(self, image, label, origin):
        """Map function counting images leaving the pipeline; drops the origin."""
        ops = [_increment(self._counts, tf.constant("decoded")), _increment(self._produced, origin)]
        with tf.control_dependencies(ops):
            return tf.identity(image), tf.identity(label)

    def keep(self, reason: tf.Tensor, label: tf.Tensor, origin: tf.Tensor) -> tf.Tensor:
        """Filter predicate: True for OK records; counts rejected ones and names their file."""

        def reject():
            ops = [
                tf.cond(
                    tf.equal(reason, code),
                    lambda key=key: _increment(self._counts, tf.constant(key)),
                    tf.no_op,
                )
                for code, key in REASONS.items()
            ]
            ops.append(_increment(self._rejected, origin))
            ops.append(
                tf.py_function(self._name_record, [reason, tf.cast(label, tf.int64), origin], [])
            )
            with tf.control_dependencies(ops):
                return tf.constant(False)

        return tf.cond(tf.equal(reason, OK), lambda: tf.constant(True), reject)

    def _name_record(self, reason, label, origin):
        why = REASONS[int(reason)]
        if int(reason) == BAD_LABEL:
            why = f"{why} ({int(label)})"
        self._name(origin.numpy().decode("utf-8", "replace"), why)

    def _name(self, origin: str, why: str) -> None:
        """Log `origin` with its reason, the first time in this run (up to MAX_NAMED files)."""
        with _RUN.lock:
            named = _RUN.named[self.scope]
            if origin in named:
                return
            if len(named) >= MAX_NAMED:
                if self.scope not in _RUN.capped:
                    _RUN.capped.add(self.scope)
                    logger.warning(
                        "%s: %d bad files named; more are counted, not named", self.name, MAX_NAMED
                    )
                return
            named.add(origin)
        logger.warning("%s: skipping %s: %s", self.name, origin, why)

    def end_of_pass(self, element_spec) -> tf.data.Dataset:
        """An empty dataset that, when reached, names the undecodable files of the pass, reports
        or keeps its counts, and resets them. Concatenate it after the last stage that can drop
        records.
        """
        keys = tf.constant(list(_KEYS))

        def report_and_reset(_):
            counts = self._counts.lookup(keys)
            exported = [t.export() for t in (self._read, self._rejected, self._produced)]
            log = tf.py_function(
                self._end_pass, [counts, *(x for pair in exported for x in pair)], []
            )
            with tf.control_dependencies([log]):
                resets = [self._counts.insert(keys, tf.zeros_like(counts))]
                resets += [
                    t.remove(k)
                    for t, (k, _) in zip(
                        (self._read, self._rejected, self._produced), exported, strict=True
                    )
                ]
            with tf.control_dependencies(resets):
                return tf.constant(False)

        empty = tf.data.Dataset.range(1).filter(report_and_reset)
        zeros = tf.nest.map_structure(
            lambda s: tf.zeros([d if d is not None else 1 for d in s.shape], s.dtype),
            element_spec,
        )
        return empty.map(lambda _: zeros)

    def _end_pass(self, counts, *tables):
        def as_dict(keys, values):
            names = [k.decode("utf-8", "replace") for k in keys.numpy()]
            return dict(zip(names, values.numpy().tolist(), strict=True))

        read, rejected, produced = (as_dict(*tables[i : i + 2]) for i in range(0, 6, 2))
        for origin, n in sorted(read.items()):
            lost = n - rejected.get(origin, 0) - produced.get(origin, 0)
            if lost > 0:
                self._name(origin, _undecodable(lost, n))
        values = dict(zip(_KEYS, (int(c) for c in counts.numpy()), strict=True))
        if self.report_passes:
            line = describe_counts(values)
            if values["read"] > values["decoded"]:
                logger.warning("%s: pass done, %s", self.name, line)
            else:
                logger.debug("%s: pass done, %s", self.name, line)
        else:
            with _RUN.lock:
                _RUN.pending[self.name] = values


def _undecodable(lost: int, read: int) -> str:
    if read == 1:
        return "undecodable image data (corrupt or truncated)"
    return f"{lost} of {read} records undecodable (corrupt or truncated image data)"


def describe_counts(values: Mapping[str, int]) -> str:
    """`skipped 2 of 62 records (1 not an image, 1 undecodable)`, or `62 records, none
    skipped`, from a pass's counts (read, decoded and one per reason)."""
    rejected = {k: values[k] for k in REASONS.values() if values.get(k)}
    skipped = values["read"] - values["decoded"]
    if skipped == 0:
        return f"{values['read']} records, none skipped"
    failed = skipped - sum(rejected.values())
    parts = [f"{n} {k}" for k, n in rejected.items()]
    if failed:
        parts.append(f"{failed} {UNDECODABLE}")
    return f"skipped {skipped} of {values['read']} records ({', '.join(parts)})"


def report_pending(when: str) -> dict[str, dict[str, int]]:
    """Log the counts of the last finished pass of each repeated input that skipped records
    (the training loop calls this once per epoch), and forget them.

    Args:
      when: what the line is about, e.g. "epoch 3".

    Returns:
      The counts reported, by data set name.
    """
    with _RUN.lock:
        pending, _RUN.pending = _RUN.pending, {}
    for name, values in sorted(pending.items()):
        if values["read"] > values["decoded"]:
            logger.warning("%s: %s: a pass over the data %s", when, name, describe_counts(values))
    return pending
