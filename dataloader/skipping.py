"""Skip bad records without stopping an epoch, and count and log every one skipped.

Records that are empty, not an image or carry an out-of-range label are rejected by a check
before decoding (counted per reason, the first few logged with their origin). Records that
still fail (corrupt or truncated JPEG data, unreadable files, unparseable records) are dropped
by `ignore_errors` and counted as the difference between records read and images produced. At
the end of each pass over the data one line logs the totals.

The counts live in a `MutableHashTable`, not a `tf.Variable`: a variable created while a
distribution strategy's scope is open would become a mirrored (per-device) variable. Each key
is updated by exactly one sequential pipeline stage, so read-modify-write is race-free.
"""

from __future__ import annotations

import logging

import tensorflow as tf

logger = logging.getLogger(__name__)

OK, EMPTY, NOT_IMAGE, BAD_LABEL = 0, 1, 2, 3
REASONS = {EMPTY: "empty", NOT_IMAGE: "not an image", BAD_LABEL: "label out of range"}
# Log the first few rejected records individually per pass; the pass summary has the rest.
_MAX_DETAILED = 10
_KEYS = ("read", "decoded", *REASONS.values())


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


class SkipCounter:
    """Counts records read, rejected (per reason) and produced for one dataset.

    Args:
      name: shown in log lines, e.g. "imagenet/train".
    """

    def __init__(self, name: str):
        self.name = name
        with tf.device("/cpu:0"):
            self._table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, 0)

    def _increment(self, key: str) -> tf.Tensor:
        key_t = tf.constant([key])
        return self._table.insert(key_t, self._table.lookup(key_t) + 1)

    def count_read(self, *element):
        """Pass-through map function counting records entering the pipeline."""
        with tf.control_dependencies([self._increment("read")]):
            out = tf.nest.map_structure(tf.identity, element)
        return out if len(out) > 1 else out[0]

    def count_produced(self, *element):
        """Pass-through map function counting images leaving the pipeline."""
        with tf.control_dependencies([self._increment("decoded")]):
            out = tf.nest.map_structure(tf.identity, element)
        return out if len(out) > 1 else out[0]

    def keep(self, reason: tf.Tensor, label: tf.Tensor, origin: tf.Tensor) -> tf.Tensor:
        """Filter predicate: True for OK records; counts and logs rejected ones."""

        def reject():
            ops = [
                tf.cond(
                    tf.equal(reason, code),
                    lambda key=key: self._increment(key),
                    tf.no_op,
                )
                for code, key in REASONS.items()
            ]
            with tf.control_dependencies(ops):
                total = tf.add_n(
                    [self._table.lookup(tf.constant([k]))[0] for k in REASONS.values()]
                )
                log = tf.cond(
                    total <= _MAX_DETAILED,
                    lambda: tf.py_function(
                        self._log_record, [reason, tf.cast(label, tf.int64), origin], []
                    ),
                    tf.no_op,
                )
            with tf.control_dependencies([log]):
                return tf.constant(False)

        return tf.cond(tf.equal(reason, OK), lambda: tf.constant(True), reject)

    def _log_record(self, reason, label, origin):
        logger.warning(
            "%s: skipped record (%s, label %d) from %s",
            self.name,
            REASONS[int(reason)],
            int(label),
            origin.numpy().decode("utf-8", "replace"),
        )

    def end_of_pass(self, element_spec) -> tf.data.Dataset:
        """An empty dataset that, when reached, logs the pass's counts and resets them.

        Concatenate it after the last stage that can drop records.
        """
        keys = tf.constant(list(_KEYS))

        def log_and_reset(_):
            counts = self._table.lookup(keys)
            log = tf.py_function(self._log_pass, [counts], [])
            with tf.control_dependencies([log]):
                reset = self._table.insert(keys, tf.zeros_like(counts))
            with tf.control_dependencies([reset]):
                return tf.constant(False)

        empty = tf.data.Dataset.range(1).filter(log_and_reset)
        zeros = tf.nest.map_structure(
            lambda s: tf.zeros([d if d is not None else 1 for d in s.shape], s.dtype),
            element_spec,
        )
        return empty.map(lambda _: zeros)

    def _log_pass(self, counts):
        values = dict(zip(_KEYS, (int(c) for c in counts.numpy()), strict=True))
        rejected = {k: values[k] for k in REASONS.values() if values[k]}
        failed = values["read"] - values["decoded"] - sum(rejected.values())
        skipped = values["read"] - values["decoded"]
        if skipped == 0:
            logger.info("%s: pass done, %d records, none skipped", self.name, values["read"])
            return
        detail = ", ".join(f"{n} {k}" for k, n in rejected.items())
        if failed:
            detail = f"{detail}, {failed} undecodable" if detail else f"{failed} undecodable"
        logger.warning(
            "%s: pass done, skipped %d of %d records (%s)",
            self.name,
            skipped,
            values["read"],
            detail,
        )
