"""Stage-wise training: the epochs of a run split into stages, and what each stage trains on.

Tan & Le 2021, "EfficientNetV2" (progressive learning): the epochs are split into `n_stages`;
image size, RandAugment magnitude, MixUp and CutMix alphas go linearly from the base_* values
(first stage) to the final ones (last stage). The model takes any image size, so it is not
rebuilt; runtime.train builds a new input pipeline and a new step function per stage (the old
ones are dropped, not cached).

This module owns the schedule only (pure Python, no TensorFlow): `Stage`, `stage_schedule`
and `stages_from_params` make it, `split_at` cuts a stage at the fine-tuning unfreeze epoch,
`stage_for_epoch` finds a resumed run's stage and `describe_stage` is its log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of stage-wise (progressive) training.

    Attributes:
      index: 0-based stage number.
      first_epoch: first epoch of the stage (0-based).
      end_epoch: one past the last epoch of the stage.
      image_size: training image size.
      raug_magnitude: RandAugment magnitude.
      mixup_alpha: MixUp alpha.
      cutmix_alpha: CutMix alpha.
    """

    index: int
    first_epoch: int
    end_epoch: int
    image_size: int
    raug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float


def stage_schedule(
    max_epochs: int,
    n_stages: int,
    *,
    image_size: tuple[int, int],
    raug_magnitude: tuple[float, float],
    mixup_alpha: tuple[float, float],
    cutmix_alpha: tuple[float, float],
) -> tuple[Stage, ...]:
    """Split `max_epochs` into stages with linearly interpolated settings.

    Each stage gets max_epochs // n_stages epochs, the last one also the remainder. Stage i of n
    uses base + (final - base) * i / (n - 1); with one stage, the final values.

    Args:
      max_epochs: epochs of the whole run.
      n_stages: number of stages (1..max_epochs).
      image_size: (base, final) image size; sizes are rounded to integers.
      raug_magnitude: (base, final) RandAugment magnitude.
      mixup_alpha: (base, final) MixUp alpha.
      cutmix_alpha: (base, final) CutMix alpha.

    Returns:
      The stages in order.

    Raises:
      ValueError: n_stages < 1 or more stages than epochs.
    """
    if n_stages < 1 or n_stages > max_epochs:
        raise ValueError(f"n_stages must be in 1..max_epochs={max_epochs}, got {n_stages}")
    per_stage = max_epochs // n_stages

    def lerp(pair, ratio):
        base, final = pair
        return base + (final - base) * ratio

    stages = []
    for i in range(n_stages):
        ratio = i / (n_stages - 1) if n_stages > 1 else 1.0
        end = max_epochs if i == n_stages - 1 else (i + 1) * per_stage
        stages.append(
            Stage(
                index=i,
                first_epoch=i * per_stage,
                end_epoch=end,
                image_size=int(round(lerp(image_size, ratio))),
                raug_magnitude=float(lerp(raug_magnitude, ratio)),
                mixup_alpha=float(lerp(mixup_alpha, ratio)),
                cutmix_alpha=float(lerp(cutmix_alpha, ratio)),
            )
        )
    return tuple(stages)


def stages_from_params(params: Mapping[str, Any]) -> tuple[Stage, ...]:
    """The stage schedule of the command-line flags."""
    return stage_schedule(
        params["max_epochs"],
        params["n_stages"],
        image_size=(params["base_img_size"], params["train_img_size"]),
        raug_magnitude=(params["base_randaug_mag"], params["raug_magnitude"]),
        mixup_alpha=(params["base_mixup"], params["mixup_alpha"]),
        cutmix_alpha=(params["base_cutmix"], params["cutmix_alpha"]),
    )


def split_at(stages: Sequence[Stage], epoch: int | None) -> tuple[Stage, ...]:
    """Split the stage containing `epoch` in two (same settings), so that the training loop
    rebuilds its step (and so the trainable set) there; stages without it are unchanged.

    Used for fine-tuning's `--unfreeze_epoch` (runtime/finetune.py); None: no split.
    """
    if epoch is None:
        return tuple(stages)
    out = []
    for stage in stages:
        if stage.first_epoch < epoch < stage.end_epoch:
            out.append(dataclasses.replace(stage, end_epoch=epoch))
            out.append(dataclasses.replace(stage, first_epoch=epoch))
        else:
            out.append(stage)
    return tuple(out)


def stage_for_epoch(stages: Sequence[Stage], epoch: int) -> Stage:
    """The stage that trains 0-based `epoch` (the last stage for epoch >= max_epochs)."""
    for stage in stages:
        if epoch < stage.end_epoch:
            return stage
    return stages[-1]


def describe_stage(
    stage: Stage, n_stages: int, augmenter: str, defer: bool, with_epochs: bool = True
) -> str:
    """One log line of what a stage trains on: only the settings that are in effect.

    `stage i/n: ` leads the line of a stage-wise run (n_stages > 1) only: a fine-tuning run cut
    at --unfreeze_epoch has phases (runtime/finetune.py), not more image-size stages.
    """
    parts = [f"epochs {stage.first_epoch + 1}-{stage.end_epoch}"] if with_epochs else []
    parts.append(f"image size {stage.image_size}")
    if augmenter == "randaugment":
        parts.append(f"RandAugment magnitude {stage.raug_magnitude:.2f}")
    elif augmenter != "none":
        parts.append(augmenter)
    where = " (in the step)" if defer else ""
    parts += [
        f"{name} {alpha:.3f}{where}"
        for name, alpha in (("mixup", stage.mixup_alpha), ("cutmix", stage.cutmix_alpha))
        if alpha > 0
    ]
    text = ", ".join(parts)
    return f"stage {stage.index + 1}/{n_stages}: {text}" if n_stages > 1 else text
