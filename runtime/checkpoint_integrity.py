"""Damaged checkpoints: tell one from a checkpoint of another model, and fall back past it.

A checkpoint is `ckpt-N.index` (a table of tensor names, shapes, offsets and CRC32C checksums)
and `ckpt-N.data-XXXXX-of-YYYYY` shards. A disk, copy or filesystem error can leave one
truncated, cut or with flipped bytes; TensorFlow's restore then fails with messages that read
like a model mismatch ("not an sstable", "Checksum does not match") or with an IndexError
("Read less bytes than requested"). So when a restore fails, `checkpoint_damage` reads every
tensor of the checkpoint back (TensorFlow checks each against its checksum): files that do not
read back are damaged; files that read back intact hold another model's variables (a
mismatch, the caller's message). `restore_newest_intact` tries the checkpoints that the
`checkpoint` file lists, newest first, skips each damaged one with a warning line naming its
file, and restores the newest intact one: resuming training and loading weights for eval,
predict and export (runtime.checkpoint) both go through it. An intact checkpoint costs
nothing extra: the check runs only after a failed restore.

Every worker of a multi-worker run reads the same files and so takes the same decision.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Sequence

import tensorflow as tf

from runtime.errors import RunError, first_line

logger = logging.getLogger(__name__)

# What TensorFlow raises on unreadable checkpoint files: OpError (DataLoss, NotFound; "not an
# sstable", "Checksum does not match"), IndexError ("Read less bytes than requested", a
# truncated .data), ValueError (an unparsable object graph).
READ_ERRORS = (tf.errors.OpError, IndexError, ValueError)
_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def listed_checkpoints(directory: str) -> list[str]:
    """The checkpoint prefixes that `directory`'s `checkpoint` file lists, newest first.

    Unlike `tf.train.latest_checkpoint`, a newest checkpoint whose .index is missing is listed
    (it is damaged, not absent: a run must not silently start over).

    Returns:
      Absolute prefixes (`.../ckpt-5`), [] without a `checkpoint` file.
    """
    state = tf.train.get_checkpoint_state(directory) if os.path.isdir(directory) else None
    if state is None:
        return []
    paths = [*state.all_model_checkpoint_paths, state.model_checkpoint_path]
    return list(dict.fromkeys(p for p in reversed(paths) if p))


def checkpoint_damage(path: str) -> str | None:
    """Why the files of checkpoint `path` do not read back, or None when they are intact.

    Returns:
      "<damaged file>: <reason>" (one line), or None when every tensor reads back and matches
      its checksum.
    """
    index = path + ".index"
    if not os.path.isfile(index):
        return f"{index}: missing"
    shards = sorted(glob.glob(glob.escape(path) + ".data-*"))
    missing = _missing_shards(path, shards)
    if missing:
        return f"{missing[0]}: missing"
    try:
        reader = tf.train.load_checkpoint(path)
    except READ_ERRORS as err:  # the data shards are all there: the index does not read
        return f"{index}: {first_line(err)}"
    try:
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except READ_ERRORS as err:
        data = shards[0] if len(shards) == 1 else f"{path}.data-*"
        return f"{data}: {first_line(err)}"
    return None


def _missing_shards(path: str, shards: Sequence[str]) -> list[str]:
    """The data shard files that the existing shards' `-of-N` names call for but are absent."""
    if not shards:
        return [f"{path}.data-00000-of-00001"]
    match = _SHARD.search(shards[0])
    if match is None:
        return []
    total = int(match[2])
    expected = [f"{path}.data-{i:05d}-of-{total:05d}" for i in range(total)]
    return [p for p in expected if p not in shards]


def restore_newest_intact(
    paths: Sequence[str], restore: Callable[[str], str | None], advice: str
) -> tuple[str, str | None]:
    """Restore the newest intact checkpoint of `paths` (newest first) with `restore`.

    Args:
      paths: checkpoint prefixes, newest first (`listed_checkpoints`, or one given by the user).
      restore: restores one prefix; returns None on success, else the first line of why not.
      advice: what to do when every checkpoint is damaged (the end of the error message).

    Returns:
      (path, None) when `path` was restored; (path, reason) when the newest intact checkpoint
      does not fit what `restore` loads into (another model: the caller says what to do).

    Raises:
      RunError: every checkpoint of `paths` is damaged (or there is none); one line naming
        each damaged file.
    """
    if not paths:
        raise RunError(f"no checkpoint to restore; {advice}")
    damaged = []
    for path in paths:
        reason = restore(path)
        if reason is None:
            return path, None
        damage = checkpoint_damage(path)
        if damage is None:
            return path, reason
        damaged.append(damage)
        logger.warning(
            "checkpoint %s is damaged (%s); trying the one before it",
            os.path.basename(path),
            damage,
        )
    if len(paths) == 1:
        raise RunError(f"checkpoint {paths[0]} is damaged ({damaged[0]}); {advice}")
    where = os.path.dirname(paths[0])
    raise RunError(f"no intact checkpoint in {where} ({'; '.join(damaged)}); {advice}")
