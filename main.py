"""EfficientNet v1/v2 training application: flags -> config -> `runtime.run(mode, params)`.

    python main.py --cfg config/efficientnet_v2/s_cfg.py --mode train_and_eval --data_dir /data

Bad flags, configs and paths fail with one line and exit status 2 before anything is written;
a run that fails for a reason the user can fix (NaN loss, missing checkpoint, bad data) exits
with status 1 and one line. `python main.py --help` lists every flag.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from runtime import flags, run_params


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the process exit status."""
    # TF's C++ INFO lines (oneDNN, CPU features) drown the progress output; warnings stay.
    # Set before anything imports TensorFlow (a --cfg module may).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    params = flags.parse(argv)  # exits 2 on bad input, before anything is written
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # TF's per-save sharding INFO lines
    from dataloader.config import DataError
    from runtime import cluster, components
    from runtime.errors import RunError
    from runtime.lock import LockError, claim_model_dir
    from utils.precision import default_use_xla

    prog = "main.py"
    try:
        # Build the data configs now so that a bad data setting fails before anything is written.
        components.data_config(params, training=True)
        components.data_config(params, training=False)
    except DataError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    if params["use_xla"] is None:
        params["use_xla"] = default_use_xla()
    try:
        # Training: lock model_dir and refuse a resume that cannot fit, before writing there.
        lock = claim_model_dir(params)
    except (LockError, RunError, DataError, cluster.ClusterError) as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(
            f"{prog}: error: cannot write to --model_dir {params['model_dir']}: {err}\n"
        )
        return 2
    try:
        return _write_params_and_run(params, prog)
    finally:
        if lock is not None:
            lock.release()


def _write_params_and_run(params: dict, prog: str) -> int:
    from config.loader import ConfigError
    from dataloader.config import DataError
    from runtime import cluster, components, distribute, run
    from runtime.errors import RunError
    from utils.fileio import WriteError

    try:
        components.write_json(
            os.path.join(params["model_dir"], run_params.params_filename(params["mode"])), params
        )
    except OSError as err:
        sys.stderr.write(
            f"{prog}: error: cannot write to --model_dir {params['model_dir']}: {err}\n"
        )
        return 2
    try:
        run(params["mode"], params)
    except (RunError, ConfigError, DataError, cluster.ClusterError, WriteError) as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 1
    except Exception as err:
        # A peer worker died or stopped responding: one line instead of a collective traceback.
        message = distribute.describe_worker_failure(err)
        if message is None:
            raise
        sys.stderr.write(f"{prog}: error: {message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
