"""Flag values checked, and the params every mode receives resolved from them.

The parser (runtime/flags.py) takes a flag's type from here when `int` or `choices` cannot say
it (`dataset_name`, `batch_size_list`, `export_formats`). `resolve` turns the parsed flags into
the params dict: the model config of --cfg (or of the run's params.json) loaded and the image
sizes filled from it; `validate` then checks what needs the values together or the model
config: ranges, flags that need another flag or a mode, paths that must exist (a data
directory and, for `--dataset folder`, its train/ and val/ class folders; the predict input;
a --runtime's export) or must not (an export that would be overwritten). Each problem is a `FlagError` whose message names the flag; runtime.flags.parse
prints it as `main.py: error: ...` and exits with status 2 before anything is written. This
module does not import TensorFlow.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any

from config.loader import load_config
from dataloader import layout
from dataloader.config import SOURCES
from runtime import imagenet_weights, run_params, runtimes
from utils.errors import BAD_INPUT, UserError

DATASETS_NEEDING_DIR = ("imagenet", "folder")
# The modes that read --data_dir (predict reads --predict_img_dir; export checks its files on
# validation images when it can read them, on random ones otherwise).
_READS_DATA = (*run_params.TRAINING_MODES, "eval", "training_benchmark", "inference_benchmark")


class FlagError(UserError, ValueError):
    """An invalid command line; the message is one line."""

    exit_code = BAD_INPUT


def dataset_name(text: str) -> str:
    """`--dataset`: one of SOURCES or tfds:NAME."""
    if text in SOURCES or (text.startswith("tfds:") and len(text) > len("tfds:")):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid dataset {text!r} (choose from {', '.join(SOURCES)} or tfds:NAME)"
    )


def batch_size_list(text: str) -> tuple[int, ...]:
    """`--benchmark_batch_sizes`: comma-separated integers >= 1."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid batch size list {text!r} (comma-separated integers >= 1, e.g. 32,64,128)"
        )
    return values


def export_formats(text: str) -> tuple[str, ...]:
    """`--export_format`: a comma-separated subset of runtimes.FORMATS, duplicates dropped."""
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in runtimes.FORMATS]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"invalid export format {','.join(bad) or text!r} (comma-separated subset of "
            f"{','.join(runtimes.FORMATS)})"
        )
    return values


def resolve(
    args: argparse.Namespace,
    saved: dict[str, Any] | None = None,
    explicit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Flags + model config -> the params dict every mode receives.

    Derived values are filled in here, once: image sizes from the model config when not
    given. use_xla stays None ("auto") here: main.py resolves it once TensorFlow is imported.

    Args:
      args: the parsed flags (for a run-reading mode already merged with `saved`).
      saved: the training run's params.json (runtime.run_params), or None.
      explicit: the flags given on the command line (with `saved`).

    Raises:
      ConfigError: bad --cfg / --mparams.
      FlagError: bad flag values.
    """
    params = dict(vars(args))
    if saved is not None:
        explicit = explicit or {}
        params["model"] = run_params.model_config(
            saved, args.model_dir, explicit.get("cfg"), explicit.get("mparams")
        )
        # Image sizes follow an --mparams / --cfg override of the model's sizes.
        for flag in ("train_img_size", "eval_img_size"):
            if flag not in explicit and ("cfg" in explicit or "mparams" in explicit):
                params[flag] = None
    elif args.cfg is None:
        raise FlagError(_missing_cfg(args.mode, args.model_dir))
    else:
        params["model"] = load_config(args.cfg, args.mparams)
    params["pretrained"] = pretrained_source(params, saved, explicit or {})
    for flag, key in (("train_img_size", "train_img_size"), ("eval_img_size", "eval_img_size")):
        if params[flag] is None:
            if key not in params["model"]:
                raise FlagError(f"--{flag} is not set and {args.cfg} defines no {key!r}")
            params[flag] = int(params["model"][key])
    validate(params)
    return params


def _missing_cfg(mode: str, model_dir: str) -> str:
    """Why --cfg is needed: for a mode that reads a run, what --model_dir lacks."""
    if not run_params.reads_run(mode):
        return "the following arguments are required: --cfg"
    if not os.path.isdir(model_dir):
        lack = f"--model_dir {model_dir} does not exist"
    else:
        lack = f"--model_dir {model_dir} holds no {run_params.PARAMS_FILE} (not a training run)"
    return (
        f"{lack}: give the --model_dir of a training run, or --cfg (and --mparams) to "
        f"{mode} without one"
    )


_POSITIVE_INTS = (
    "log_steps",
    "max_epochs",
    "train_batch_size",
    "eval_batch_size",
    "predict_batch_size",
    "predict_top_k",
    "grad_accum_steps",
    "save_checkpoint_freq",
    "keep_checkpoints",
    "num_epochs_between_eval",
    "n_stages",
    "base_img_size",
    "benchmark_steps",
    "max_image_pixels",
    "cpu_replicas",
)
_NON_NEGATIVE = (
    "grad_clip_norm",
    "weight_decay",
    "mixup_alpha",
    "cutmix_alpha",
    "base_mixup",
    "base_cutmix",
    "raug_magnitude",
    "base_randaug_mag",
    "lr_warmup_epochs",
    "opt_epsilon",
    "momentum",
    "benchmark_warmup_steps",
    "raug_num_layers",
    "save_checkpoint_minutes",
)


def validate(params: dict[str, Any]) -> None:
    """Check value ranges and combinations of the resolved params.

    Raises:
      FlagError: the first problem found, as one line naming the flag.
    """
    for name, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FlagError(f"--{name} must be a finite number, got {value}")
    for name in _POSITIVE_INTS:
        if params[name] < 1:
            raise FlagError(f"--{name} must be >= 1, got {params[name]}")
    for name in _NON_NEGATIVE:
        if params[name] < 0:
            raise FlagError(f"--{name} must be >= 0, got {params[name]}")
    for name in ("steps_per_epoch", "save_checkpoint_steps", "train_img_size", "eval_img_size"):
        if params[name] is not None and params[name] < 1:
            raise FlagError(f"--{name} must be >= 1, got {params[name]}")
    if params["num_gpus"] is not None and params["num_gpus"] < 0:
        raise FlagError(f"--num_gpus must be >= 0, got {params['num_gpus']}")
    if params["lr_init"] <= 0:
        raise FlagError(f"--lr_init must be > 0, got {params['lr_init']}")
    if params["lr_decay_epochs"] <= 0:
        raise FlagError(f"--lr_decay_epochs must be > 0, got {params['lr_decay_epochs']}")
    for name in ("moving_average_decay", "label_smoothing"):
        if not 0 <= params[name] < 1:
            raise FlagError(f"--{name} must be in [0, 1), got {params[name]}")
    for name in ("decay", "lr_decay_rate", "beta_1", "beta_2"):
        if not 0 <= params[name] <= 1:
            raise FlagError(f"--{name} must be in [0, 1], got {params[name]}")
    if params["crop_fraction"] is not None and not 0 < params["crop_fraction"] <= 1:
        raise FlagError(f"--crop_fraction must be in (0, 1], got {params['crop_fraction']}")
    log_name = params["log_filename"]
    if not log_name or os.path.basename(log_name) != log_name or log_name in (".", ".."):
        raise FlagError(
            f"--log_filename must be a file name inside --model_dir, not a path: {log_name!r}"
        )
    if params["crop_area_min"] is not None and not 0 < params["crop_area_min"] <= 1:
        raise FlagError(f"--crop_area_min must be in (0, 1], got {params['crop_area_min']}")
    if params["n_stages"] > params["max_epochs"]:
        raise FlagError(
            f"--n_stages={params['n_stages']} exceeds --max_epochs={params['max_epochs']}"
        )
    if (
        params["dataset"] in DATASETS_NEEDING_DIR
        and params["mode"] not in ("predict", "training_benchmark", "inference_benchmark", "export")
        and not params["data_dir"]
    ):
        raise FlagError(f"--dataset {params['dataset']} needs --data_dir")
    if (
        params["data_dir"]
        and params["dataset"] in DATASETS_NEEDING_DIR
        and not os.path.isdir(params["data_dir"])
    ):
        raise FlagError(f"--data_dir {params['data_dir']} is not a directory")
    if params["dataset"] == "folder" and params["data_dir"] and params["mode"] in _READS_DATA:
        try:
            layout.check_layout(params["data_dir"])
        except UserError as err:
            raise FlagError(f"--data_dir {params['data_dir']}: {err}") from err
    _validate_finetune(params)
    _validate_advprop(params)
    if params["mode"] == "predict":
        if not params["predict_img_dir"]:
            raise FlagError("--mode predict needs --predict_img_dir (an image file or a folder)")
        if not os.path.exists(params["predict_img_dir"]):
            raise FlagError(f"--predict_img_dir {params['predict_img_dir']} does not exist")
    _validate_export(params)


def _validate_advprop(params: dict[str, Any]) -> None:
    """--advprop_* ranges (runtime/advprop.py); pixel units need raw 0..255 model inputs."""
    for name in ("advprop_epsilon", "advprop_step_size"):
        if not params[name] > 0:
            raise FlagError(f"--{name} must be > 0 (pixels), got {params[name]}")
    if params["advprop_steps"] < 1:
        raise FlagError(f"--advprop_steps must be >= 1, got {params['advprop_steps']}")
    if params["advprop"] and params["model"].get("input_normalization") == "none":
        raise FlagError(
            "--advprop needs raw 0..255 model inputs (input_normalization imagenet "
            "or scale128); with input_normalization=none pixel units are unknown"
        )


def _validate_export(params: dict[str, Any]) -> None:
    """Export and --runtime checks: never overwrite an export, never run a missing one."""
    if params["runtime_threads"] is not None and params["runtime_threads"] < 1:
        raise FlagError(f"--runtime_threads must be >= 1, got {params['runtime_threads']}")
    if params["runtime_batch"] is not None and params["runtime_batch"] < 0:
        raise FlagError(f"--runtime_batch must be >= 0, got {params['runtime_batch']}")
    if params["mode"] == "export":
        if params["export_quantize"] != "none" and "tflite" not in params["export_format"]:
            raise FlagError(
                f"--export_quantize {params['export_quantize']} applies to LiteRT "
                "only; add tflite to --export_format"
            )
        for path in runtimes.planned_artifacts(params).values():
            if os.path.exists(path):
                raise FlagError(f"{path} exists; remove it or pass another --export_dir")
    if params["runtime"] != "keras":
        if params["mode"] not in ("predict", "inference_benchmark"):
            raise FlagError(
                f"--runtime {params['runtime']} is for --mode predict and inference_benchmark only"
            )
        path = runtimes.runtime_artifact(params)
        if not os.path.exists(path):
            fmt = runtimes.RUNTIME_FORMATS[params["runtime"]]
            quant = (
                f" --export_quantize {params['export_quantize']}"
                if params["export_quantize"] != "none"
                else ""
            )
            raise FlagError(
                f"--runtime {params['runtime']} runs {path}, which does not exist; "
                f"write it with --mode export --export_format {fmt}{quant}"
            )


_FREEZE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def pretrained_source(
    params: dict[str, Any], saved: dict[str, Any] | None, explicit: dict[str, Any]
) -> str | None:
    """`--pretrained` as this run uses it: "imagenet", an absolute path, or None.

    Training starts from it. Eval, predict and export (INFERENCE_MODES) use it as published,
    which a model_dir remembers (runtime.finetune.record_pretrained_run): a params.json that
    training wrote names where training started, not the weights to use, so it is not inherited
    then (the run's checkpoints are), and giving it is an error; a params.json recorded for a
    published model is inherited, and another `--pretrained` is an error.

    Raises:
      FlagError: `--pretrained` for a model_dir whose params.json says otherwise.
    """
    source = params["pretrained"]
    if source is not None and source != imagenet_weights.IMAGENET:
        source = os.path.abspath(source)
    if saved is None or params["mode"] in run_params.TRAINING_MODES:
        return source
    model_dir = params["model_dir"]
    if saved.get("mode", run_params.TRAINING_MODES[0]) in run_params.TRAINING_MODES:
        if "pretrained" in explicit:
            raise FlagError(
                f"--pretrained: {model_dir} holds a training run (its {run_params.PARAMS_FILE}); "
                "leave --pretrained out to use its checkpoints, or use another --model_dir "
                "for the published weights"
            )
        return None
    if "pretrained" in explicit and source != saved.get("pretrained"):
        raise FlagError(
            f"--pretrained {source}: {model_dir} holds the model of --pretrained "
            f"{saved.get('pretrained')} (its {run_params.PARAMS_FILE}); leave --pretrained "
            "out, or use another --model_dir"
        )
    return source


def _validate_pretrained(params: dict[str, Any]) -> None:
    """--pretrained: imagenet (a file exists for the model) or a path of the mode's kind."""
    source, mode = params["pretrained"], params["mode"]
    if source is None or mode not in (*run_params.TRAINING_MODES, *run_params.INFERENCE_MODES):
        return
    if source == imagenet_weights.IMAGENET:
        reason = imagenet_weights.unavailable(params["model"].get("name"))
        if reason is not None:
            raise FlagError(f"--pretrained imagenet: {reason}")
    elif mode in run_params.TRAINING_MODES:
        if not (os.path.exists(source) or os.path.isfile(source + ".index")):
            raise FlagError(
                f"--pretrained {source} does not exist (a weights file, run directory, "
                "checkpoint prefix or imagenet)"
            )
    elif not os.path.isfile(source):
        raise FlagError(
            f"--pretrained {source} is not a file: --mode {mode} takes a weights file or "
            "imagenet (for a run of ours: --model_dir, or --predict_ckpt for one checkpoint)"
        )
    if mode in run_params.INFERENCE_MODES and params["predict_ckpt"]:
        raise FlagError(
            "--predict_ckpt and --pretrained name two sets of weights; give one "
            "(--pretrained: weights as published, --predict_ckpt: a checkpoint of a run)"
        )


def _validate_finetune(params: dict[str, Any]) -> None:
    """--pretrained; --freeze_until, --unfreeze_epoch (training modes only)."""
    _validate_pretrained(params)
    if params["mode"] not in run_params.TRAINING_MODES:
        return
    until = params["freeze_until"]
    if until is not None:
        stage = re.match(r"^stage(\d+)(_|$)", until)
        stages = len(params["model"].get("blocks", ()))
        if not _FREEZE_NAME.match(until) or (stage and not 1 <= int(stage[1]) <= stages):
            raise FlagError(
                f"--freeze_until {until!r}: use stem, stage1..stage{stages}, "
                "stageN_blockM, head (train only the classifier) or a layer name"
            )
    epoch = params["unfreeze_epoch"]
    if epoch is not None and not 1 <= epoch < params["max_epochs"]:
        raise FlagError(
            f"--unfreeze_epoch must be in 1..{params['max_epochs'] - 1} "
            f"(--max_epochs {params['max_epochs']}), got {epoch}"
        )
