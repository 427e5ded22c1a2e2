"""Command-line flags: the parser (every general flag with its default and help) and `parse`.

Defaults follow NVIDIA's TF2 EfficientNet reference (utils/cmdline_helper.py) except where a
NOTE says otherwise. Each default is written once: the data and optimizer flags take theirs
from the fields of `DataConfig` and `OptimizerConfig` (`_DATA`, `_OPT`), the training-step
flags from config.defaults.STEP_DEFAULTS (which runtime.step's `StepConfig` reads too). Model
hyperparameters are not flags: they come from the `--cfg` module and strict `--mparams`
overrides (config/loader.py). The runtime never imports this module: it reads the resolved
params (runtime/flag_checks.py resolves and checks them).

Errors are one line (`main.py: error: ...`) and exit with status 2, before anything is written:
unknown flags (with the closest valid flag and the full list), bad values, unknown `--mparams`
keys, a missing config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

from config.defaults import STEP_DEFAULTS
from config.efficientnet_v1 import V1_DATA_RECIPE as _V1
from config.efficientnet_v2 import V2_DATA_RECIPE as _V2
from dataloader.config import AUGMENTERS, EVAL_CROPS, RESIZE_METHODS, SOURCES, DataConfig
from dataloader.files import DEFAULT_MAX_IMAGE_PIXELS  # noqa: F401 (re-exported)
from runtime import MODES, run_params, runtimes
from runtime.distribute import ALL_REDUCE_CHOICES
from runtime.flag_checks import batch_size_list, dataset_name, export_formats, resolve
from utils.choices import AMP_DTYPES, OPTIMIZERS, SCHEDULE_ORIGINS, SCHEDULES
from utils.errors import UserError
from utils.optimizer_config import OptimizerConfig

# The choice lists come from their implementing packages' TensorFlow-free modules, so a typo on
# the command line fails before TensorFlow loads (seconds).
MODE_NAMES = tuple(MODES)
DATASET_SOURCES = SOURCES
OPTIMIZER_NAMES = OPTIMIZERS
LR_DECAYS = SCHEDULES

# The dataclass field defaults the data and optimizer flags take (the one place each is written).
_DATA = MappingProxyType({f.name: f.default for f in dataclasses.fields(DataConfig)})
_OPT = MappingProxyType({f.name: f.default for f in dataclasses.fields(OptimizerConfig)})


class FlagParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2, and a record of its flags.

    `groups` maps each argument group's title to the actions added to it, in order; flags
    added to the parser itself (--help) are under "options", the group argparse shows them in.
    Readers use `actions()` and `groups`, never argparse's private `_actions`.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.groups: dict[str, list[argparse.Action]] = {"options": []}  # before --help is added
        super().__init__(**kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.groups["options"].append(action)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        """argparse's group, whose `add_argument` also records the action in `groups`."""
        group = super().add_argument_group(*args, **kwargs)
        record = self.groups.setdefault(group.title, [])
        add = group.add_argument

        def add_and_record(*flag_args: Any, **flag_kwargs: Any) -> argparse.Action:
            action = add(*flag_args, **flag_kwargs)
            record.append(action)
            return action

        group.add_argument = add_and_record
        return group

    def actions(self) -> list[argparse.Action]:
        """Every action added (--help included), group by group."""
        return [action for group in self.groups.values() for action in group]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> FlagParser:
    """The argument parser with every general flag, grouped as in `--help`."""
    p = FlagParser(
        prog="main.py",
        allow_abbrev=False,
        description="EfficientNet v1/v2 training application (TF 2.21 / Keras 3). Model "
        "hyperparameters come from --cfg and --mparams; everything else is a flag.",
    )
    bool_flag = argparse.BooleanOptionalAction

    g = p.add_argument_group("run")
    g.add_argument(
        "--cfg",
        default=None,
        help="model config module, e.g. config/efficientnet_v2/s_cfg.py; it is "
        "executed as Python code (like any Python config): use trusted files "
        "only. Optional for modes that read --model_dir/params.json: "
        f"{', '.join(run_params.RUN_READING_MODES)}",
    )
    g.add_argument(
        "--mparams", default=None, help="model config overrides k=v,k=v (unknown keys are an error)"
    )
    g.add_argument("--mode", default="train_and_eval", choices=MODE_NAMES)
    # NOTE: the reference writes to /results/; a relative default works without root.
    g.add_argument(
        "--model_dir", default="results", help="checkpoints, logs, params.json and exports go here"
    )
    g.add_argument("--log_steps", type=int, default=100, help="steps between progress log lines")
    g.add_argument(
        "--log_filename",
        default="log.json",
        help="DLLogger JSON-lines file in model_dir (a file name, not a path)",
    )
    g.add_argument(
        "--enable_tensorboard",
        action=bool_flag,
        default=False,
        help="also write TensorBoard events to model_dir/tensorboard",
    )
    g.add_argument(
        "--seed", type=int, default=_DATA["seed"], help="global random seed (None: not seeded)"
    )
    g.add_argument(
        "--num_gpus",
        type=int,
        default=None,
        help="GPUs of this process (default: all visible; 0: CPU)",
    )
    g.add_argument(
        "--all_reduce",
        default="auto",
        choices=ALL_REDUCE_CHOICES,
        help="gradient all-reduce implementation across replicas / workers",
    )
    g.add_argument(
        "--fp16_compression",
        action=bool_flag,
        default=False,
        help="all-reduce gradients in float16 (half the bytes)",
    )
    g.add_argument(
        "--cpu_replicas",
        type=int,
        default=1,
        help="without GPUs: MirroredStrategy over this many logical CPU devices "
        "(tests and scripts/benchmark_table.py; 1 = no strategy)",
    )

    g = p.add_argument_group("precision and compilation")
    g.add_argument(
        "--use_xla",
        action=bool_flag,
        default=None,
        help="XLA jit_compile (default: on with a GPU, off on CPU where it is slower)",
    )
    g.add_argument("--use_amp", action=bool_flag, default=False, help="mixed precision")
    g.add_argument(
        "--amp_dtype",
        default="float16",
        choices=AMP_DTYPES,
        help="float16 uses dynamic loss scaling, bfloat16 needs none",
    )
    g.add_argument(
        "--use_tf32",
        action=bool_flag,
        default=True,
        help="TensorFloat-32 for float32 matmuls/convolutions on Ampere+ GPUs",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        type=dataset_name,
        default=_DATA["dataset"],
        help="imagenet (TFRecords), tfds:NAME, folder, digits (bundled, no download), synthetic",
    )
    g.add_argument(
        "--data_dir",
        default=_DATA["data_dir"],
        help="where the dataset lives (imagenet, folder, tfds)",
    )
    g.add_argument("--augmenter_name", default=_DATA["augmenter"], choices=AUGMENTERS)
    g.add_argument(
        "--raug_num_layers",
        type=int,
        default=_DATA["raug_num_layers"],
        help="RandAugment ops per image",
    )
    g.add_argument(
        "--raug_magnitude",
        type=float,
        default=_DATA["raug_magnitude"],
        help="RandAugment magnitude (of the last stage with --n_stages > 1)",
    )
    g.add_argument(
        "--mixup_alpha", type=float, default=_DATA["mixup_alpha"], help="MixUp alpha; 0 = off"
    )
    g.add_argument(
        "--cutmix_alpha", type=float, default=_DATA["cutmix_alpha"], help="CutMix alpha; 0 = off"
    )
    g.add_argument(
        "--defer_img_mixing",
        action=bool_flag,
        default=_DATA["defer_img_mixing"],
        help="MixUp/CutMix inside the train step (on the accelerator) instead of the input pipeline",
    )
    g.add_argument(
        "--crop_fraction",
        type=float,
        default=_DATA["crop_fraction"],
        help="eval center-crop fraction (default: size / (size + 32))",
    )
    g.add_argument(
        "--cache",
        action=bool_flag,
        default=_DATA["cache"],
        help="keep the dataset in host memory after the first epoch",
    )
    g.add_argument(
        "--follow_symlinks",
        action=bool_flag,
        default=_DATA["follow_symlinks"],
        help="folder / predict inputs: follow symlinks that point outside the folder",
    )
    # NOTE: PIL's Image.MAX_IMAGE_PIXELS default (decompression-bomb guard, dataloader.files).
    g.add_argument(
        "--max_image_pixels",
        type=int,
        default=_DATA["max_image_pixels"],
        help="folder / predict inputs: skip (and report) images with more pixels, "
        "read from the JPEG/PNG header before decoding",
    )
    # Data recipe overrides (issue 9): None = the model family's value (docs/parity.md).
    g.add_argument(
        "--crop_area_min",
        type=float,
        default=None,
        help="smallest random-crop area fraction (default: "
        f"v1 {_V1['crop_area_min']}, v2 {_V2['crop_area_min']})",
    )
    g.add_argument(
        "--eval_crop",
        default=None,
        choices=EVAL_CROPS,
        help="eval/predict transform: center crop, or resize the whole image to the "
        f"square (default: v1 crop; v2 squash at >= {_V2['eval_squash_min_size']} px, "
        "crop below)",
    )
    g.add_argument(
        "--resize_method",
        default=None,
        choices=RESIZE_METHODS,
        help=f"image resize (default: v1 {_V1['resize_method']}, v2 {_V2['resize_method']})",
    )
    g.add_argument(
        "--label_offset",
        type=int,
        default=None,
        choices=(0, 1),
        help="stored TFRecord label of class 0: 1 for the standard ImageNet build, 0 "
        "for 0-based shards (default: dataset_info.json, else 1)",
    )
    g.add_argument(
        "--auto_bn_momentum",
        action=bool_flag,
        default=True,
        help="lower BN momentum when an epoch has fewer steps than its averaging "
        "window 1 / (1 - momentum) (small data; docs/parity.md)",
    )

    g = p.add_argument_group("training")
    g.add_argument(
        "--train_img_size",
        type=int,
        default=None,
        help="training image size (default: the model config's; of the last stage)",
    )
    g.add_argument("--max_epochs", type=int, default=300, help="epochs of the whole run")
    g.add_argument(
        "--steps_per_epoch",
        type=int,
        default=None,
        help="optimizer updates per epoch (default: train images / global batch)",
    )
    g.add_argument("--train_batch_size", type=int, default=_DATA["batch_size"], help="per device")
    g.add_argument(
        "--grad_accum_steps",
        type=int,
        default=STEP_DEFAULTS["grad_accum_steps"],
        help="micro-batches per update; global batch = batch x devices x steps",
    )
    g.add_argument(
        "--grad_clip_norm",
        type=float,
        default=_OPT["grad_clip_norm"],
        help="clip the global gradient norm; 0 = off",
    )
    g.add_argument(
        "--label_smoothing",
        type=float,
        default=STEP_DEFAULTS["label_smoothing"],
        help="of the cross-entropy loss",
    )
    g.add_argument(
        "--moving_average_decay",
        type=float,
        default=0.0,
        help="EMA of weights and BN statistics; 0 = off (e.g. 0.9999)",
    )
    g.add_argument("--save_checkpoint_freq", type=int, default=5, help="epochs between checkpoints")
    g.add_argument(
        "--resume_checkpoint",
        action=bool_flag,
        default=True,
        help="continue from the latest checkpoint in model_dir",
    )

    g = p.add_argument_group("fine-tuning (docs/finetune.md)")
    g.add_argument(
        "--pretrained",
        default=None,
        help="start from these weights: imagenet (the keras.applications ImageNet file of "
        "the model, downloaded once into $KERAS_HOME/models), a keras.applications "
        "EfficientNet(V2) .h5 / .weights.h5 file, a PyTorch EfficientNet .pth / .safetensors "
        "state dict, or a run directory, checkpoint or model.weights.h5 of ours (not a resume: "
        "optimizer, step and EMA start fresh). eval/predict/export: use imagenet or a weights "
        "file as published, no training (recorded in model_dir/params.json)",
    )
    g.add_argument(
        "--freeze_until",
        default=None,
        help="freeze layers up to this one: stem, stageN, stageN_blockM, a layer "
        "name, or head (train only the classifier)",
    )
    g.add_argument(
        "--freeze_bn",
        action=bool_flag,
        default=False,
        help="BatchNormalization in inference mode, not trained (small data sets)",
    )
    g.add_argument(
        "--unfreeze_epoch",
        type=int,
        default=None,
        help="two phases: the first N epochs train with --freeze_until (default "
        "head), later epochs everything, with the learning-rate warm-up again",
    )

    g = p.add_argument_group("AdvProp (docs/advprop.md)")
    g.add_argument(
        "--advprop",
        action=bool_flag,
        default=False,
        help="also train on PGD adversarial images through auxiliary BatchNorms",
    )
    g.add_argument(
        "--advprop_epsilon",
        type=float,
        default=1.0,
        help="L-inf radius of the attack, in pixels (0..255 scale)",
    )
    g.add_argument("--advprop_steps", type=int, default=1, help="PGD steps per batch")
    g.add_argument("--advprop_step_size", type=float, default=1.0, help="PGD step, in pixels")

    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", default=_OPT["name"], choices=OPTIMIZER_NAMES)
    g.add_argument("--momentum", type=float, default=_OPT["momentum"], help="rmsprop / momentum")
    # NOTE: beta_1 / beta_2 are Keras' defaults, not the reference's 0.0 (utils/optimizer_config).
    g.add_argument("--beta_1", type=float, default=_OPT["beta_1"], help="adam / adamw / lamb")
    g.add_argument("--beta_2", type=float, default=_OPT["beta_2"], help="adam / adamw / lamb")
    g.add_argument("--nesterov", action=bool_flag, default=_OPT["nesterov"], help="momentum")
    g.add_argument(
        "--opt_epsilon", type=float, default=_OPT["epsilon"], help="rmsprop / adam / adamw / lamb"
    )
    g.add_argument("--decay", type=float, default=_OPT["rho"], help="RMSProp rho")
    g.add_argument(
        "--weight_decay",
        type=float,
        default=_OPT["weight_decay"],
        help="L2 in the loss (rmsprop/sgd/momentum/adam) or decoupled (adamw/lamb)",
    )

    g = p.add_argument_group("learning rate")
    g.add_argument(
        "--lr_init",
        type=float,
        default=0.008,
        help="learning rate for a global batch of 128 (scaled linearly)",
    )
    g.add_argument("--lr_decay", default="exponential", choices=LR_DECAYS)
    g.add_argument(
        "--lr_decay_rate",
        type=float,
        default=0.97,
        help="multiplier per decay (exponential, piecewise)",
    )
    g.add_argument(
        "--lr_decay_epochs",
        type=float,
        default=2.4,
        help="epochs between decays (exponential, piecewise)",
    )
    g.add_argument(
        "--lr_warmup_epochs",
        type=float,
        default=5.0,
        help="linear warm-up from 0 to the peak learning rate",
    )
    g.add_argument(
        "--lr_decay_origin",
        default="warmup_end",
        choices=SCHEDULE_ORIGINS,
        help="decay counts from the end of warm-up (NVIDIA) or from step 0 (automl)",
    )

    g = p.add_argument_group("stage-wise training (progressive learning)")
    g.add_argument(
        "--n_stages", type=int, default=1, help="stages of progressive training (1 = off)"
    )
    g.add_argument("--base_img_size", type=int, default=128, help="image size of the first stage")
    g.add_argument("--base_mixup", type=float, default=0.0, help="MixUp alpha of the first stage")
    g.add_argument("--base_cutmix", type=float, default=0.0, help="CutMix alpha of the first stage")
    g.add_argument(
        "--base_randaug_mag",
        type=float,
        default=5.0,
        help="RandAugment magnitude of the first stage",
    )

    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--eval_img_size",
        type=int,
        default=None,
        help="evaluation image size (default: the model config's)",
    )
    g.add_argument("--eval_batch_size", type=int, default=100, help="per device")
    g.add_argument(
        "--skip_eval",
        action=bool_flag,
        default=False,
        help="train_and_eval: no evaluation during or after training",
    )
    g.add_argument(
        "--num_epochs_between_eval",
        type=int,
        default=1,
        help="train_and_eval: evaluate every this many epochs (and at the end)",
    )

    g = p.add_argument_group("predict and export")
    g.add_argument("--predict_img_dir", default=None, help="an image file or a folder (any depth)")
    g.add_argument(
        "--predict_ckpt",
        default=None,
        help="checkpoint prefix, directory or .weights.h5 (default: latest in model_dir)",
    )
    g.add_argument("--predict_batch_size", type=int, default=32, help="images per predict batch")
    g.add_argument(
        "--export_SavedModel",
        action=bool_flag,
        default=False,
        help="also export the final (better of raw/EMA) weights as a TF SavedModel",
    )
    g.add_argument("--predict_top_k", type=int, default=5, help="classes reported per image")
    g.add_argument(
        "--export_format",
        type=export_formats,
        default=("saved_model",),
        help="--mode export: comma-separated subset of " + ",".join(runtimes.FORMATS),
    )
    g.add_argument(
        "--export_quantize",
        default="none",
        choices=runtimes.QUANTIZATIONS,
        help="LiteRT (tflite) post-training quantization; --runtime litert runs that file",
    )
    g.add_argument(
        "--export_preprocessing",
        action=bool_flag,
        default=False,
        help="bake the eval crop+resize into the export: uint8 images of any size in "
        "(SavedModel: also serve_bytes for encoded JPEG/PNG)",
    )
    g.add_argument(
        "--export_dir",
        default=None,
        help="where --mode export writes and --runtime reads (default: model_dir/export)",
    )
    g.add_argument(
        "--runtime",
        default="keras",
        choices=runtimes.RUNTIMES,
        help="predict / inference_benchmark: the Keras model or an exported file",
    )
    g.add_argument(
        "--runtime_threads",
        type=int,
        default=None,
        help="CPU threads of onnxruntime / litert (default: all cores)",
    )
    g.add_argument(
        "--runtime_batch",
        type=int,
        default=None,
        help="images per call into the runtime: a larger batch runs in slices of this many "
        "(same logits; default: 8 for onnxruntime / litert, measured faster on CPU; whole batch "
        "for keras / saved_model; 0: always the whole batch)",
    )

    g = p.add_argument_group("benchmarks (training_benchmark, inference_benchmark)")
    g.add_argument(
        "--benchmark_batch_sizes",
        type=batch_size_list,
        default=None,
        help="per-device batch sizes to sweep, e.g. 32,64,128 (default: "
        "--train_batch_size / --eval_batch_size)",
    )
    g.add_argument("--benchmark_steps", type=int, default=50, help="timed steps per batch size")
    g.add_argument(
        "--benchmark_warmup_steps",
        type=int,
        default=10,
        help="untimed steps first (tracing, XLA compilation, autotuning)",
    )
    return p


def flag_names(parser: FlagParser) -> list[str]:
    """Every `--flag` the parser knows (both spellings of booleans)."""
    return sorted(s for a in parser.actions() for s in a.option_strings if s.startswith("--"))


def _reject_unknown(parser: FlagParser, extras: Sequence[str]) -> NoReturn:
    names = flag_names(parser)
    first = extras[0].split("=", 1)[0]
    close = difflib.get_close_matches(first, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    parser.error(
        f"unrecognized argument(s): {' '.join(extras)}{hint}; valid flags: {' '.join(names)}"
    )


def _defaults(parser: FlagParser) -> dict[str, Any]:
    """Every flag's default value by destination."""
    return {a.dest: a.default for a in parser.actions() if a.dest != "help"}


@functools.cache
def flag_defaults() -> Mapping[str, Any]:
    """Every flag's default value by destination (read-only), for code that shares one."""
    return MappingProxyType(_defaults(build_parser()))


def _explicit_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The flags given in `argv` (with their parsed values), without the defaults."""
    parser = build_parser()
    for action in parser.actions():
        action.default = argparse.SUPPRESS
    return vars(parser.parse_known_args(argv)[0])


def parse(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse and validate the command line; on error print one line and exit with status 2.

    Args:
      argv: arguments without the program name (default sys.argv[1:]).

    Returns:
      The params dict (use_xla may still be None = auto).
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        _reject_unknown(parser, extras)
    try:
        saved = None
        if run_params.reads_run(args.mode):
            saved = run_params.load_saved_params(args.model_dir)
        explicit, taken = {}, {}
        if saved is not None:
            explicit = _explicit_flags(argv)
            taken = run_params.saved_flag_values(saved, parser.actions(), explicit, args.model_dir)
            args = argparse.Namespace(**{**_defaults(parser), **taken, **explicit})
        with run_params.naming_the_file(taken, args.model_dir):
            return resolve(args, saved, explicit)
    except UserError as err:  # FlagError, ConfigError, ...: bad input, exit status 2
        parser.error(str(err))
