"""Training checkpoints (tf.train.Checkpoint + CheckpointManager) and weight loading for inference.

A training checkpoint holds the model's weights, the optimizer's slots and update count (the
LR schedule is a function of it), the loss scale of a LossScaleOptimizer (part of the
optimizer), the EMA shadows, the number of finished epochs (which fixes the stage) and the
random state: the Keras SeedGenerator states of dropout and stochastic depth (not part of
`model`'s checkpoint dependencies) and TensorFlow's global tf.random.Generator. With the
per-epoch data seeds of runtime.train, a killed and resumed seeded run draws the same random
numbers as the uninterrupted one.

Atomicity: TensorFlow writes a checkpoint's data files under temporary names, renames them
when complete, and only then rewrites the `checkpoint` index with
`atomic_write_string_to_file`; old checkpoints are deleted after that. So a process killed at
any moment leaves the index pointing at a complete checkpoint (tests/runtime/test_checkpoint.py
kills a writer with SIGKILL to check it).

What that leaves behind, and what this module cleans: a save that fails (disk full, read-only)
or is killed leaves `ckpt-N_temp/` folders and `checkpoint.tmp<hex>` files. A failed save
removes its own and becomes a one-line RunError with the free space (the previous checkpoint
stays the latest); `remove_stale_checkpoint_temps` removes those of killed runs at start-up
(under the model_dir lock, so no other run is writing them).

A resume that cannot work (another architecture, optimizer or class list than the checkpoint's)
is refused by `check_resume_fits` from the params.json the checkpoint's run wrote, before this
run writes anything into model_dir. A checkpoint whose files are damaged (truncated, cut,
flipped bytes) is told apart from one of another model after a failed restore, and skipped for
the newest intact one, for training and for inference alike (runtime.checkpoint_integrity).

The final weights of training (`model.weights.h5`) go through `save_weights_atomically`: a
temporary file renamed when complete, after a free-space check.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil

import keras
import tensorflow as tf

from runtime import distribute
from runtime.checkpoint_integrity import READ_ERRORS, listed_checkpoints, restore_newest_intact
from runtime.class_names import load_class_names
from runtime.errors import RunError
from runtime.errors import first_line as _first_line
from utils.ema import ExponentialMovingAverage
from utils.fileio import atomic_path, check_free_space, free_space, remove_stale_temps

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
EMA_KEY_PREFIX = "ema/"
# TensorFlow's temporary names: `<prefix>_temp/` (functional_saver) and `checkpoint.tmp<hex>`
# (atomic_write_string_to_file of the index).
_TEMP_ENTRY = re.compile(r"^(ckpt-\d+_temp.*|checkpoint\.tmp[0-9a-f]*)$")
# Model-config keys that decide the variables' shapes: a checkpoint only fits the same values.
SHAPE_KEYS = (
    "blocks",
    "width_coefficient",
    "depth_coefficient",
    "depth_divisor",
    "min_depth",
    "round_down_guard",
    "stem_filters",
    "head_filters",
    "fix_head_stem",
    "include_top",
)


def checkpoint_dir(model_dir: str) -> str:
    """Where training checkpoints of `model_dir` live."""
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


class TrainingCheckpoint:
    """Save and restore the full training state of a run.

    Every worker must call `save` (variables may be mirrored and saving can involve
    collectives under MultiWorkerMirroredStrategy); only the chief's copy in `model_dir` is
    kept, the others write to a temporary directory deleted right after (runtime.distribute).
    Every worker restores from the chief's directory.

    Args:
      model_dir: the run directory; checkpoints go to `model_dir/checkpoints`.
      model: the Keras model.
      optimizer: the (built) optimizer, possibly a LossScaleOptimizer.
      ema: the ExponentialMovingAverage, or None when EMA is off.
      dist: the run's Distribution (who is chief); None = `Distribution.current()`.
      max_to_keep: how many checkpoints to keep.
    """

    def __init__(
        self,
        model_dir: str,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        ema: ExponentialMovingAverage | None = None,
        dist: distribute.Distribution | None = None,
        max_to_keep: int = 3,
    ) -> None:
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        objects = {
            "model": model,
            "optimizer": optimizer,
            "epoch": self.epoch,
            "rng": random_state(model),
        }
        if ema is not None:
            objects["ema"] = ema
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.dist = dist or distribute.Distribution.current()
        self.directory = checkpoint_dir(model_dir)
        self._manager = tf.train.CheckpointManager(
            self.checkpoint,
            distribute.checkpoint_write_dir(self.directory, self.dist),
            max_to_keep,
        )

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest complete checkpoint in model_dir, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self) -> int | None:
        """Restore the newest intact checkpoint if there is one (damaged newer ones are skipped
        with a warning naming the file: runtime.checkpoint_integrity).

        Returns:
          The number of epochs it had finished, or None when there is no checkpoint.

        Raises:
          RunError: the checkpoint is another model's, or every checkpoint is damaged.
        """
        paths = listed_checkpoints(self.directory)
        if not paths:
            return None
        # Values this run does not use (e.g. EMA shadows after turning EMA off) are dropped
        # without a warning; every object of this run must be found, though.
        path, reason = restore_newest_intact(
            paths,
            lambda p: restore_or_explain(self.checkpoint, p),
            "--no-resume_checkpoint trains from scratch in this --model_dir",
        )
        if reason is not None:
            raise RunError(
                f"checkpoint {path} does not match this model/optimizer ({reason}); "
                "use another --model_dir or --no-resume_checkpoint"
            )
        epoch = int(self.epoch.numpy())
        logger.info("resumed from %s (epoch %d)", path, epoch)
        return epoch

    def save(self, epoch: int) -> str | None:
        """Write a checkpoint after `epoch` finished epochs.

        Returns:
          The path written on the chief, None elsewhere.
        """
        self.epoch.assign(epoch)
        try:
            path = self._manager.save(checkpoint_number=epoch)
        except (tf.errors.OpError, OSError) as err:
            write_dir = self._manager.directory
            _remove_failed_save(write_dir, epoch, self.latest)
            reason = getattr(err, "message", None) or str(err)
            raise RunError(
                f"cannot write checkpoint {os.path.join(write_dir, f'ckpt-{epoch}')}: "
                f"{_first_line(Exception(reason))} ({free_space(write_dir)} free on its "
                f"filesystem); the latest complete checkpoint is still {self.latest}"
            ) from err
        if not self.dist.is_chief:
            distribute.remove_worker_write_dir(self.directory, self.dist)
            return None
        logger.info("saved checkpoint %s", path)
        return path


def _remove_failed_save(directory: str, epoch: int, latest: str | None) -> None:
    """Delete what a failed save of `ckpt-<epoch>` left in `directory` (never `latest`)."""
    if not os.path.isdir(directory):
        return
    prefix = f"ckpt-{epoch}"
    for entry in os.scandir(directory):
        partial = entry.name.startswith(prefix + ".") and (
            latest is None or os.path.basename(latest) != prefix
        )
        if _TEMP_ENTRY.match(entry.name) or partial:
            _remove(entry.path)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def remove_stale_checkpoint_temps(model_dir: str) -> list[str]:
    """Delete temporary files of interrupted saves and writes in model_dir (call under the lock).

    Removes `ckpt-N_temp/` folders and `checkpoint.tmp*` files in model_dir/checkpoints, and
    utils.fileio `.tmp-<pid>-*` files of dead processes in both folders.

    Returns:
      The removed paths.
    """
    directory = checkpoint_dir(model_dir)
    removed = remove_stale_temps(model_dir) + remove_stale_temps(directory)
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if _TEMP_ENTRY.match(entry.name):
                _remove(entry.path)
                removed.append(entry.path)
    if removed:
        logger.warning(
            "removed %d temporary file(s) of interrupted saves: %s",
            len(removed),
            ", ".join(sorted(os.path.basename(p) for p in removed)),
        )
    return removed


def check_resume_fits(
    params: dict,
    saved: dict | None,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """Refuse a resume whose checkpoint cannot fit this run, before anything is written.

    Args:
      params: this run's resolved configuration.
      saved: the params.json of the run that wrote the checkpoint (None: not known, no check).
      num_classes: this run's class count (from the data set), None when unknown.
      class_names: this run's class names, None when unknown.

    Raises:
      RunError: one line naming what differs and what to do.
    """
    if not saved:
        return
    hint = "use another --model_dir, or --no-resume_checkpoint to start over in this one"
    old_model, new_model = saved.get("model") or {}, params["model"]
    for key in SHAPE_KEYS:
        old, new = old_model.get(key), new_model.get(key)
        if isinstance(old, list):
            old = tuple(old)
        if isinstance(new, list):
            new = tuple(new)
        if key in old_model and old != new:
            raise RunError(
                f"cannot resume: the checkpoint in {params['model_dir']} was trained "
                f"with {key}={old!r} (--cfg {saved.get('cfg')}), this run has "
                f"{key}={new!r}; {hint}"
            )
    if saved.get("optimizer") not in (None, params["optimizer"]):
        raise RunError(
            f"cannot resume: the checkpoint in {params['model_dir']} was trained with "
            f"--optimizer {saved['optimizer']}, this run has {params['optimizer']}; "
            f"{hint}"
        )
    if saved.get("moving_average_decay") == 0 and params["moving_average_decay"] > 0:
        raise RunError(
            f"cannot resume: the checkpoint in {params['model_dir']} has no EMA "
            f"(--moving_average_decay 0), this run asks for "
            f"{params['moving_average_decay']}; {hint}"
        )
    try:
        saved_classes = load_class_names(params["model_dir"])
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: nothing to compare with
        saved_classes = None
    if saved_classes is None or num_classes is None:
        return
    old_count, old_names = saved_classes
    if old_count != num_classes:
        raise RunError(
            f"cannot resume: the checkpoint in {params['model_dir']} has {old_count} "
            f"classes, the data set of this run has {num_classes}; {hint}"
        )
    if old_names and class_names and tuple(old_names) != tuple(class_names):
        first = next(
            i for i, (a, b) in enumerate(zip(old_names, class_names, strict=True)) if a != b
        )
        raise RunError(
            f"cannot resume: class {first} of the checkpoint is {old_names[first]!r}, "
            f"of this run's data set {class_names[first]!r} (labels would be mixed "
            f"up); {hint}"
        )


class _UnrestoredValuesFilter(logging.Filter):
    """Drops TF's per-variable "could not be found" lines of a checkpoint that failed to load."""

    PREFIXES = (
        "Value in checkpoint could not be found",
        "An attribute in the restored object",
        "Detecting that an object or model or tf.train.Checkpoint is being deleted",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIXES)


def restore_or_explain(checkpoint: tf.train.Checkpoint, path: str) -> str | None:
    """Restore `path` into `checkpoint` expecting every object of it to be found.

    Values of the file that the objects do not use are dropped without a warning. When the
    file does not fit, TF would log one warning per unused checkpoint value (hundreds) as the
    failed restore is garbage collected; those are silenced, so the caller's one-line error
    is all the user sees.

    Returns:
      None when restored, else the first line of the reason it does not fit.
    """
    try:
        status = checkpoint.restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
        return None
    except (AssertionError, *READ_ERRORS) as err:
        reason = _first_line(err)
    # Installed for the rest of the process: the failed restore's bookkeeping may live as long
    # as the model does, and logs when it is collected.
    logging.getLogger("tensorflow").addFilter(_UnrestoredValuesFilter())
    gc.collect()
    return reason


SEED_STATE_NAME = "seed_generator_state"


def seed_states(model: keras.Model) -> list[tf.Variable]:
    """The state variables of the model's Keras SeedGenerators (dropout, stochastic depth), in
    the model's (deterministic) variable order."""
    states = []
    for variable in model.variables:
        if variable.name == SEED_STATE_NAME:
            value = variable.value
            if not isinstance(value, tf.Variable):
                raise RunError(
                    f"Keras seed state {variable.path} is not backed by a tf.Variable "
                    f"({type(value).__name__}); this Keras version is not supported"
                )
            states.append(value)
    return states


def random_state(model: keras.Model) -> tf.train.Checkpoint:
    """A checkpointable object with the model's seed states and the global tf.random.Generator."""
    seeds = {f"seed_{i}": v for i, v in enumerate(seed_states(model))}
    return tf.train.Checkpoint(generator=tf.random.get_global_generator(), **seeds)


def _resolve_checkpoint(model_dir: str, checkpoint: str | None) -> list[str]:
    """Turn `checkpoint` (None, a directory, a prefix or a .weights.h5 file) into the paths to
    try: one file or prefix, or a directory's listed checkpoints, newest first."""
    if checkpoint and checkpoint.endswith(".weights.h5"):
        if not os.path.isfile(checkpoint):
            raise RunError(f"weights file not found: {checkpoint}")
        return [checkpoint]
    if checkpoint is None or os.path.isdir(checkpoint):
        base = checkpoint or model_dir
        for directory in (checkpoint_dir(base), base):
            listed = listed_checkpoints(directory)
            if listed:
                return listed
        raise RunError(f"no checkpoint found in {base} (train first, or pass a checkpoint path)")
    if not os.path.isfile(checkpoint + ".index"):
        raise RunError(f"checkpoint not found: {checkpoint} (expected {checkpoint}.index)")
    return [checkpoint]


def restore_for_inference(
    model: keras.Model, model_dir: str, checkpoint: str | None = None, prefer_ema: bool = True
) -> dict:
    """Load weights into `model` for eval / predict / export.

    Args:
      model: a built model of the same architecture as the trained one.
      model_dir: the run directory (used when `checkpoint` is None).
      checkpoint: None for the newest training checkpoint of `model_dir`, a directory to take
        its newest checkpoint, a checkpoint prefix (`.../ckpt-5`) or a `.weights.h5` file.
      prefer_ema: use the EMA weights when the checkpoint has them.

    Returns:
      {"path": what was loaded, "weights": "ema" | "raw"}.

    Raises:
      RunError: nothing to load, the checkpoint does not fit the model, or every checkpoint is
        damaged (a damaged newer one is skipped with a warning naming the file).
    """
    paths = _resolve_checkpoint(model_dir, checkpoint)
    if paths[0].endswith(".weights.h5"):
        path = paths[0]
        try:
            model.load_weights(path)
        except ValueError as err:
            raise RunError(f"weights file {path} does not fit this model: {err}") from err
        return {"path": path, "weights": "raw"}
    emas: dict[str, ExponentialMovingAverage | None] = {}

    def restore(path: str) -> str | None:
        try:
            keys = {name for name, _ in tf.train.list_variables(path)}
        except READ_ERRORS as err:
            return _first_line(err)
        has_ema = any(k.startswith(EMA_KEY_PREFIX) for k in keys)
        emas[path] = ExponentialMovingAverage(model, 0.0) if (has_ema and prefer_ema) else None
        objects = {"model": model} if emas[path] is None else {"model": model, "ema": emas[path]}
        return restore_or_explain(tf.train.Checkpoint(**objects), path)

    path, reason = restore_newest_intact(
        paths, restore, "pass an intact checkpoint (--predict_ckpt), or train again"
    )
    ema = emas.get(path)
    if reason is not None:
        raise RunError(
            f"checkpoint {path} does not fit this model ({reason}): it was trained "
            "with another architecture or class count"
        )
    if ema is not None:
        ema.copy_to_model()
    weights = "ema" if ema is not None else "raw"
    logger.info("loaded %s weights from %s", weights, path)
    return {"path": path, "weights": weights}


def save_weights_atomically(model: keras.Model, path: str) -> str:
    """`model.save_weights(path)` through a temporary file and a rename (utils.fileio).

    The free space is checked first (weights bytes + 10% + 1 MiB): h5py crashes the process
    when a write fails on a full disk, so it must not start one.

    Raises:
      WriteError: not enough space, or the write failed; the previous file is unchanged.
    """
    needed = sum(int(v.numpy().nbytes) for v in model.weights)
    check_free_space(path, int(needed * 1.1) + (1 << 20))
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
    return path
