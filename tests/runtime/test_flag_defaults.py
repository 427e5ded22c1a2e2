"""One place per default: a flag and the dataclass field it fills never disagree, and model/
repeats none of the model config's defaults (issue 13, point 4)."""

import dataclasses
import inspect

import pytest

from dataloader.config import DataConfig
from runtime import flags
from utils.optimizer_config import OptimizerConfig

# Flags whose None means "the model family's value" (runtime.components.data_config), not a
# DataConfig default.
RECIPE_FLAGS = ("crop_area_min", "eval_crop", "resize_method")


def field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def shared(cls, renamed: dict[str, str], skip=()) -> dict[str, str]:
    """{flag: field} for the flags named like a field of `cls`, plus the renamed ones."""
    same = {n: n for n in flags.flag_defaults() if n in field_defaults(cls) and n not in skip}
    return {**same, **renamed}


CASES = {
    "DataConfig": (
        DataConfig,
        shared(
            DataConfig,
            {"augmenter_name": "augmenter", "train_batch_size": "batch_size"},
            skip=RECIPE_FLAGS,
        ),
    ),
    "OptimizerConfig": (
        OptimizerConfig,
        shared(OptimizerConfig, {"optimizer": "name", "opt_epsilon": "epsilon", "decay": "rho"}),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_flag_defaults_are_the_dataclass_defaults(name):
    cls, pairs = CASES[name]
    defaults, fields = flags.flag_defaults(), field_defaults(cls)
    disagree = {
        flag: (defaults[flag], fields[field])
        for flag, field in pairs.items()
        if defaults[flag] != fields[field]
    }
    assert disagree == {}, f"flag default != {name} default (flag: (flag, field))"


def test_the_shared_names_cover_the_data_and_optimizer_flags():
    data, optimizer = CASES["DataConfig"][1], CASES["OptimizerConfig"][1]
    assert {"augmenter_name", "raug_magnitude", "raug_num_layers", "mixup_alpha"} <= set(data)
    assert {"cache", "seed", "max_image_pixels", "train_batch_size"} <= set(data)
    assert set(optimizer) == {
        "optimizer",
        "momentum",
        "beta_1",
        "beta_2",
        "nesterov",
        "opt_epsilon",
        "decay",
        "weight_decay",
        "grad_clip_norm",
    }
    # The recipe flags are the documented exception: None until the model config fills them.
    assert all(flags.flag_defaults()[n] is None for n in RECIPE_FLAGS)


def test_parsed_flags_give_the_dataclass_defaults():
    params = flags.parse(["--cfg", "config/efficientnet_v1/b0_cfg.py", "--dataset", "synthetic"])
    assert params["augmenter_name"] == DataConfig.augmenter == "autoaugment"
    assert params["raug_magnitude"] == DataConfig.raug_magnitude == 10.0
    assert params["grad_clip_norm"] == OptimizerConfig.grad_clip_norm == 0.0


def test_step_config_defaults_are_the_flag_defaults():
    from runtime.step import StepConfig

    defaults = flags.flag_defaults()
    # advprop: the flag is the switch, the field the attack built from it (None = off).
    names = [n for n in field_defaults(StepConfig) if n in defaults and n != "advprop"]
    assert names == ["grad_accum_steps", "label_smoothing", "mixup_alpha", "cutmix_alpha"]
    assert {n: field_defaults(StepConfig)[n] for n in names} == {n: defaults[n] for n in names}
    assert StepConfig().label_smoothing == 0.1


def test_step_config_from_params_takes_the_resolved_flags():
    from runtime.step import StepConfig

    argv = ["--cfg", "config/efficientnet_v1/b0_cfg.py", "--dataset", "synthetic", "--use_xla"]
    config = StepConfig.from_params(
        flags.parse([*argv, "--grad_accum_steps", "4", "--label_smoothing", "0.2"])
    )
    assert (config.grad_accum_steps, config.label_smoothing, config.jit_compile) == (4, 0.2, True)
    # rmsprop: the L2 penalty is in the loss; adamw decays the weights itself.
    assert config.l2_weight_decay == flags.flag_defaults()["weight_decay"] > 0
    assert StepConfig.from_params(flags.parse([*argv, "--optimizer", "adamw"])).l2_weight_decay == 0
    # MixUp/CutMix in the step are set per stage by the epoch loop (--defer_img_mixing) only.
    mixed = StepConfig.from_params(flags.parse([*argv, "--mixup_alpha", "0.5"]))
    assert (mixed.mixup_alpha, mixed.cutmix_alpha, mixed.advprop) == (0.0, 0.0, None)


# model/ argument -> the model config key that holds its value (config/defaults.py, or the
# family modules for round_down_guard).
MODEL_ARGS = {
    "activation": "activation",
    "bn_momentum": "bn_momentum",
    "bn_epsilon": "bn_epsilon",
    "divisor": "depth_divisor",
    "min_depth": "min_depth",
    "round_down_guard": "round_down_guard",
    "drop_connect_rate": "drop_connect_rate",
}


def test_model_code_repeats_no_model_config_default():
    from model import blocks, specs

    functions = {
        "BaseBlock": blocks.BaseBlock.__init__,
        "SqueezeExcite": blocks.SqueezeExcite.__init__,
        "round_filters": specs.round_filters,
        "expand_blocks": specs.expand_blocks,
    }
    checked = set()
    for name, fn in functions.items():
        for param in inspect.signature(fn).parameters.values():
            if param.name in MODEL_ARGS:
                checked.add(param.name)
                assert param.default is inspect.Parameter.empty, f"{name}({param.name}=...)"
    assert checked == set(MODEL_ARGS)


def test_recipe_flag_help_names_the_model_family_values():
    from config.efficientnet_v1 import V1_DATA_RECIPE as v1
    from config.efficientnet_v2 import V2_DATA_RECIPE as v2

    helps = {a.dest: " ".join(a.help.split()) for a in flags.build_parser().actions() if a.help}
    assert f"v1 {v1['crop_area_min']}, v2 {v2['crop_area_min']}" in helps["crop_area_min"]
    assert f"v1 {v1['resize_method']}, v2 {v2['resize_method']}" in helps["resize_method"]
    assert f"squash at >= {v2['eval_squash_min_size']} px" in helps["eval_crop"]
