"""EfficientNet v1/v2 training application: flags -> config -> `runtime.run(mode, params)`.

    python main.py --cfg config/efficientnet_v2/s_cfg.py --mode train_and_eval --data_dir /data

Every error the user can fix is a `utils.errors.UserError`, caught once here and printed as one
line: bad flags, configs and paths exit with status 2 before anything is written; a run that
fails for a reason the user can fix (NaN loss, missing checkpoint, bad data) exits with status
1; training stopped by SIGTERM, SIGINT or SIGUSR1 writes a checkpoint and exits with status 75
(runtime/preemption.py). `python main.py --help` lists every flag.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from runtime import flags, run_params
from utils.errors import RESUMABLE, UserError, before_run

if TYPE_CHECKING:
    from runtime.lock import ModelDirLock

PROG = "main.py"
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the process exit status."""
    # TF's C++ INFO lines (oneDNN, CPU features) drown the progress output; warnings stay.
    # Set before anything imports TensorFlow (a --cfg module may).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    params = flags.parse(argv)  # exits 2 on bad input, before anything is written
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # TF's per-save sharding lines (absl) and its PreemptionCheckpointHandler's thread notes.
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        lock = check_and_claim(params)
        try:
            _write_params_and_run(params)
        finally:
            if lock is not None:
                lock.release()
    except UserError as err:
        sys.stderr.write(f"{PROG}: {err.heading}{err}\n")
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training's graceful stop (runtime.preemption)
        sys.stderr.write(f"{PROG}: interrupted\n")
        return INTERRUPTED
    return 0


def check_and_claim(params: dict) -> ModelDirLock | None:
    """Before anything is written: check the data settings; for training, lock model_dir.

    Returns:
      The held model_dir lock, or None when the mode needs none.

    Raises:
      UserError: with exit status 2 (bad input).
    """
    from runtime import components
    from runtime.finetune import fetch_imagenet_before_run
    from runtime.lock import claim_model_dir
    from utils.precision import default_use_xla

    with before_run():
        # Build the data configs now so that a bad data setting fails before anything is written.
        components.data_config(params, training=True)
        components.data_config(params, training=False)
        if params["use_xla"] is None:
            params["use_xla"] = default_use_xla()
        # --pretrained imagenet: the download fails (offline, bad MD5) before anything is written.
        fetch_imagenet_before_run(params)
        # Training: lock model_dir and refuse a resume that cannot fit, before writing there.
        with _writing_model_dir(params):
            return claim_model_dir(params)


def _write_params_and_run(params: dict) -> None:
    """Write the params file (a failure is bad input, exit 2), then run the mode.

    Raises:
      UserError: the run failed for a reason the user can fix (a dead peer worker included).
    """
    from runtime import components, distribute, run
    from runtime.errors import RunError

    with before_run(), _writing_model_dir(params):
        components.write_json(
            os.path.join(params["model_dir"], run_params.params_filename(params["mode"])), params
        )
    try:
        run(params["mode"], params)
    except Exception as err:
        # A peer worker died or stopped responding: one line instead of a collective traceback.
        message = None if isinstance(err, UserError) else distribute.describe_worker_failure(err)
        if message is None:
            raise
        raise RunError(message) from err


@contextlib.contextmanager
def _writing_model_dir(params: dict) -> Iterator[None]:
    """An OSError inside is a --model_dir that cannot be written: one line naming it."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write to --model_dir {params['model_dir']}: {err}") from err


def exit_process(status: int) -> None:
    """End the process with `status`; at once after a graceful stop (RESUMABLE).

    NOTE: after a stop on a signal the checkpoint is written, the log closed and the lock
    released, and ending the process at once is what makes the stop hold under srun. TensorFlow's
    teardown of a multi-worker process waits for its peers (5-14 s measured), Python restores
    the default signal handlers while it finalizes, and `srun --kill-on-bad-exit=1` sends
    SIGTERM to the other tasks the moment the first exits: that signal killed the later task
    during its teardown, and the job failed instead of requeueing itself on 75.
    """
    if status != RESUMABLE:
        sys.exit(status)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_process(main())
