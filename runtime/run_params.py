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

A hand-edited file is checked like the command line (exit status 2, one line naming the key and
the file): each value the mode takes goes through its flag's type and choices
(`saved_flag_values`, from the parser's actions) and keeps its JSON type (`"100"` is no
integer, `"no"` no boolean); the range checks of runtime.flag_checks name the file when the
value came from it (`naming_the_file`); the model config goes through model.schema. A key that
is no flag is an error with the closest flag (a typo would otherwise be dropped silently), as
an unknown `--mparams` key is.

This module does not import TensorFlow (main.py parses flags before it loads TensorFlow).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from config.loader import ConfigError, apply_overrides, load_config, parse_mparams
from model.schema import MODEL_KEYS, is_int, is_number, validate_model_config
from utils.errors import UserError

PARAMS_FILE = "params.json"
# The modes that train (and write PARAMS_FILE); every other mode writes params_<mode>.json.
TRAINING_MODES = ("train", "train_and_eval")
# The modes that use --pretrained weights as published (no training).
INFERENCE_MODES = ("eval", "predict", "export")
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
# The keys of params.json that are not flags: the model config and what training derived.
NON_FLAG_KEYS = ("model", "derived")
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
    try:
        validate_model_config(saved["model"], complete=True)
    except ConfigError as err:
        raise ConfigError(f'"model" in {path}: {err}') from err
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


def saved_flag_values(
    saved: Mapping[str, Any],
    actions: Sequence[argparse.Action],
    explicit: Collection[str],
    model_dir: str,
) -> dict[str, Any]:
    """The flag values a run-reading mode takes from the run's params.json, checked as flags.

    Keys given on the command line (`explicit`) and RUN_LOCAL_KEYS are not taken, so their
    values are not checked either.

    Args:
      saved: the params.json (`load_saved_params`).
      actions: the flag parser's actions (runtime.flags).
      explicit: the flags given on the command line.
      model_dir: for the messages.

    Returns:
      {flag: value} as the parser would produce it (lists as tuples, ints of float flags as
      floats).

    Raises:
      ConfigError: a key that is no flag, or a value its flag refuses; one line naming the key
        and the file.
    """
    path = os.path.join(model_dir, PARAMS_FILE)
    by_dest = {a.dest: a for a in actions if a.dest != "help"}
    taken = {}
    for key, value in saved.items():
        if key in NON_FLAG_KEYS:
            continue
        if key not in by_dest:
            close = difflib.get_close_matches(key, list(by_dest), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise ConfigError(f'"{key}" in {path} is not a flag{hint}; rename or remove it')
        if key in RUN_LOCAL_KEYS or key in explicit:
            continue
        try:
            taken[key] = flag_value(by_dest[key], value)
        except ValueError as err:
            raise ConfigError(f'"{key}" in {path} {err} ({_override_hint(by_dest[key])})') from None
    return taken


def flag_value(action: argparse.Action, value: Any) -> Any:
    """What the parser makes of flag `action` set to `value`, the JSON form training wrote.

    The value goes through the flag's own `type` and `choices` and must keep the JSON type of
    what the parser produces: true/false for a --x/--no-x flag, a number for an int or float
    flag, a string, the text or its list for a comma-separated flag, null only for a flag
    whose default is unset.

    Raises:
      ValueError: "must be ..., got ..." (the end of a sentence that starts with the key).
    """
    shown = json.dumps(value)
    if value is None:
        if action.default is None:
            return None
        raise ValueError(f"must not be null (the flag's default is {action.default!r})")
    if isinstance(action, argparse.BooleanOptionalAction):
        ok, wanted = isinstance(value, bool), "true or false"
    elif action.type in (int, float):
        ok = is_int(value) if action.type is int else is_number(value)
        wanted = "an integer" if action.type is int else "a finite number"
    elif action.type is None:
        ok, wanted = isinstance(value, str), "a string"
    else:  # a flag that parses text (--dataset, comma-separated lists): the text or its list
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) or is_int(v) for v in value)
        )
        wanted = "the flag's text (a string, or a list of its comma-separated values)"
    if not ok:
        raise ValueError(f"must be {wanted}, got {shown}")
    parsed = value
    if action.type is not None:
        text = ",".join(map(str, value)) if isinstance(value, list) else value
        try:
            parsed = action.type(text)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"is not a valid {action.option_strings[0]} value: {err}") from None
    if action.choices is not None and parsed not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"must be one of {choices}, got {shown}")
    return parsed


def _override_hint(action: argparse.Action) -> str:
    return f"fix the file, or override it with {' / '.join(action.option_strings)}"


@contextlib.contextmanager
def naming_the_file(taken: Collection[str], model_dir: str) -> Iterator[None]:
    """A flag error raised inside about a value taken from params.json names the key and file.

    The range and combination checks (runtime.flag_checks) name flags as `--flag`; when the
    first one they name came from the file (`taken`), the message says so.
    """
    try:
        yield
    except UserError as err:
        named = [k for k in re.findall(r"--(\w+)", str(err)) if k in taken]
        if not named:
            raise
        path = os.path.join(model_dir, PARAMS_FILE)
        raise ConfigError(
            f'"{named[0]}" in {path}: {err} (fix the file, or override the flag)'
        ) from err
