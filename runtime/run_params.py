"""A run remembers itself: modes after training read `model_dir/params.json`.

Training (TRAINING_MODES) writes its resolved configuration (every flag plus the model config)
to `model_dir/params.json`; the other modes write theirs to `params_<mode>.json`
(`params_filename`) and never overwrite the training record. Eval, predict, export and the
benchmarks (RUN_READING_MODES) start from it, so they need only `--model_dir` and their new
input (e.g. `--predict_img_dir`):

    saved params.json  <-  flags given on the command line

Flags that describe the machine or this invocation (RUN_LOCAL_KEYS: mode, model_dir, XLA, GPU
count, the predict input and checkpoint) are never taken from the file. `--cfg` is optional
then; a `--cfg` or `--mparams` that would build a different architecture than the trained one
is refused in one line (it could not load the checkpoint). Settings that do not change the
weights (dropout, image sizes, crop fraction, batch sizes) may be overridden.

This module does not import TensorFlow (main.py parses flags before it loads TensorFlow).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from config.loader import ConfigError, apply_overrides, load_config, parse_mparams
from model.schema import MODEL_KEYS

PARAMS_FILE = "params.json"
# The modes that train (and write PARAMS_FILE); every other mode writes params_<mode>.json.
TRAINING_MODES = ("train", "train_and_eval")
# The modes that read a training run's params.json (main.py's export mode included).
RUN_READING_MODES = ("eval", "predict", "export", "training_benchmark", "inference_benchmark")
# Never inherited: they describe this invocation or this machine, not the trained model.
RUN_LOCAL_KEYS = (
    "mode",
    "model_dir",
    "use_xla",
    "num_gpus",
    "all_reduce",
    "fp16_compression",
    "cpu_replicas",
    "predict_img_dir",
    "predict_ckpt",
    "resume_checkpoint",
)
# The model-config keys that change the weights or an inference output; dropout_rate,
# drop_connect_rate and bn_momentum act only in training.
ARCHITECTURE_KEYS = tuple(
    k for k in MODEL_KEYS if k not in ("dropout_rate", "drop_connect_rate", "bn_momentum")
)


def params_filename(mode: str) -> str:
    """Where the resolved params of `mode` go in model_dir: params.json for training, and
    params_<mode>.json for the other modes so they never overwrite the training record."""
    return PARAMS_FILE if mode in TRAINING_MODES else f"params_{mode}.json"


def reads_run(mode: str) -> bool:
    """Whether `mode` starts from the params.json of the run in --model_dir."""
    return mode in RUN_READING_MODES


def load_saved_params(model_dir: str) -> dict[str, Any] | None:
    """The training params of `model_dir` (params.json), or None when there is none.

    Raises:
      ConfigError: the file exists but is not a params.json written by training.
    """
    path = os.path.join(model_dir, PARAMS_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ConfigError(f"{path} is not a training run's params.json (no 'model' config)")
    return saved


def architecture_diff(trained: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """`key: trained -> requested` for every architecture key that differs."""

    def norm(value):  # params.json stores tuples as lists
        return list(value) if isinstance(value, tuple | list) else value

    return [
        f"{k}: {trained.get(k)!r} -> {requested.get(k)!r}"
        for k in ARCHITECTURE_KEYS
        if norm(trained.get(k)) != norm(requested.get(k))
    ]


def model_config(
    saved: Mapping[str, Any], model_dir: str, cfg: str | None, mparams: str | None
) -> dict[str, Any]:
    """The model config of a run-reading mode: the trained one, with allowed overrides.

    Args:
      saved: the run's params.json.
      model_dir: for the messages.
      cfg: `--cfg` when given on the command line, else None.
      mparams: `--mparams` when given on the command line, else None.

    Returns:
      The model config dict.

    Raises:
      ConfigError: the overrides change the architecture (one line naming the keys).
    """
    trained = dict(saved["model"])
    if cfg is None and not mparams:
        return trained
    if cfg is not None:
        requested = load_config(cfg, mparams)
    else:
        requested = apply_overrides(trained, parse_mparams(mparams))
    changed = architecture_diff(trained, requested)
    if changed:
        given = " ".join(f for f, v in (("--cfg", cfg), ("--mparams", mparams)) if v)
        raise ConfigError(
            f"{given} would change the architecture of the model trained in {model_dir} "
            f"({'; '.join(changed[:3])}); leave them out to use the run's params.json, or "
            "use another --model_dir"
        )
    return requested


def merge(
    defaults: Mapping[str, Any], saved: Mapping[str, Any], explicit: Mapping[str, Any]
) -> dict[str, Any]:
    """parser defaults <- saved run (except RUN_LOCAL_KEYS) <- flags given on the command line.

    Keys of the saved file that the parser does not know (written by another version) are
    dropped; lists are turned back into the tuples the parser produces.
    """
    inherited = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in saved.items()
        if k in defaults and k not in RUN_LOCAL_KEYS
    }
    return {**defaults, **inherited, **explicit}
