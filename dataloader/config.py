"""Typed configuration of the input pipeline and what a data source reports about itself."""

from __future__ import annotations

import dataclasses

from dataloader.files import DEFAULT_MAX_IMAGE_PIXELS
from utils.errors import UserError

AUGMENTERS = ("none", "autoaugment", "randaugment")
RESIZE_METHODS = ("bilinear", "bicubic", "bicubic_tf1")
EVAL_CROPS = ("crop", "squash")
# Plain source names; "tfds:<name>" is accepted on top of these.
SOURCES = ("imagenet", "folder", "digits", "synthetic")


class DataError(UserError, ValueError):
    """A dataset name, path or setting that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything `build_dataset` needs; one instance per training stage.

    The field defaults are the one place the data defaults live: runtime/flags.py takes the
    defaults of its data flags from them (`--augmenter_name` from `augmenter`, ...).

    Stage-wise training (progressive resizing, growing RandAugment magnitude and mixing) builds
    a new dataset from `dataclasses.replace(cfg, image_size=..., raug_magnitude=...)`.

    Attributes:
      dataset: "imagenet" (TFRecords `train-*` / `validation-*` in data_dir), "tfds:NAME"
        (a prepared TFDS image-classification dataset in data_dir), "folder"
        (`data_dir/train/<class>/*`, `data_dir/val/<class>/*`), "digits" (scikit-learn's
        bundled 8x8 digits, no data_dir) or "synthetic" (random tensors, for benchmarks).
      data_dir: where the source lives; unused by "digits" and "synthetic".
      image_size: output height = width in pixels.
      batch_size: per-replica batch size.
      num_classes: None takes the source's own count; a value must match it (or, for
        "imagenet" without metadata and "synthetic", sets it).
      augmenter: "none", "autoaugment" (ImageNet policy v0) or "randaugment".
      raug_num_layers: RandAugment ops applied per image.
      raug_magnitude: RandAugment magnitude on the 0..10 scale of the paper (larger values
        extrapolate, as EfficientNetV2's stage schedule does).
      mixup_alpha: MixUp Beta(alpha, alpha) parameter; 0 disables MixUp.
      cutmix_alpha: CutMix Beta(alpha, alpha) parameter; 0 disables CutMix.
      defer_img_mixing: leave MixUp/CutMix to the caller's step (`mixing.mix_batch`) so they
        run on the accelerator instead of the input pipeline's CPU.
      crop_fraction: eval center-crop fraction of the shorter side ("crop" mode); None means
        image_size / (image_size + 32) as in the EfficientNet reference.
      eval_crop: "crop" (square center crop of `crop_fraction`) or "squash" (the whole image
        resized to the square, automl v2 at >= 320 px); used by eval, predict and export.
      crop_area_min: smallest random-resized-crop area fraction (0.08 for v1, 0.05 for v2).
      crop_min_object_covered: the random crop's `min_object_covered` (0.1 for v1, 0 for v2).
      crop_aspect_range: random-resized-crop aspect-ratio range (width / height).
      resize_method: "bilinear", "bicubic" (TF2) or "bicubic_tf1" (TF1 resize_bicubic, the
        v1/Lite reference); bicubic output is clipped to 0..255.
      The model families' values of the last four come from the model config
      (runtime.components.data_config; docs/parity.md).
      cache: keep records in memory after the first epoch (train: serialized records;
        validation: preprocessed images). Only for data sets that fit in host memory.
      shuffle_buffer: examples in the train shuffle buffer (serialized records).
      seed: makes shuffling and augmentation reproducible; None draws fresh randomness.
      one_based_labels: TFRecord label convention (`--label_offset`); None reads it from the
        converter's `dataset_info.json`, or assumes the standard 1-based ImageNet build when
        absent (and checks the labels when the shards are small enough to scan).
      follow_symlinks: "folder": read symlinks that point outside data_dir (dataloader.files).
      max_image_pixels: "folder": skip (and count) images whose header declares more pixels.
    """

    dataset: str = "imagenet"
    data_dir: str | None = None
    image_size: int = 224
    batch_size: int = 32
    num_classes: int | None = None
    augmenter: str = "autoaugment"
    raug_num_layers: int = 2
    raug_magnitude: float = 10.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    defer_img_mixing: bool = False
    crop_fraction: float | None = None
    eval_crop: str = "crop"
    crop_area_min: float = 0.08
    crop_min_object_covered: float = 0.1
    crop_aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    resize_method: str = "bilinear"
    cache: bool = False
    shuffle_buffer: int = 10_000
    seed: int | None = None
    one_based_labels: bool | None = None
    follow_symlinks: bool = False
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self):
        if self.dataset not in SOURCES and not self.dataset.startswith("tfds:"):
            raise DataError(
                f"unknown dataset {self.dataset!r}; expected one of {', '.join(SOURCES)} "
                "or tfds:NAME"
            )
        if self.dataset == "tfds:":
            raise DataError("dataset 'tfds:' needs a TFDS name, e.g. tfds:imagenet2012")
        if self.augmenter not in AUGMENTERS:
            raise DataError(
                f"unknown augmenter {self.augmenter!r}; expected one of {', '.join(AUGMENTERS)}"
            )
        if self.resize_method not in RESIZE_METHODS:
            raise DataError(
                f"unknown resize_method {self.resize_method!r}; expected one of "
                f"{', '.join(RESIZE_METHODS)}"
            )
        if self.eval_crop not in EVAL_CROPS:
            raise DataError(
                f"unknown eval_crop {self.eval_crop!r}; expected one of {', '.join(EVAL_CROPS)}"
            )
        if not 0 <= self.crop_min_object_covered <= 1:
            raise DataError(
                f"crop_min_object_covered must be in [0, 1], got {self.crop_min_object_covered}"
            )
        for name in ("image_size", "batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes is not None and self.num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {self.num_classes}")
        for name in ("mixup_alpha", "cutmix_alpha", "raug_magnitude"):
            if getattr(self, name) < 0:
                raise DataError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.raug_num_layers < 0:
            raise DataError(f"raug_num_layers must be >= 0, got {self.raug_num_layers}")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise DataError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if not 0 < self.crop_area_min <= 1:
            raise DataError(f"crop_area_min must be in (0, 1], got {self.crop_area_min}")
        low, high = self.crop_aspect_range
        if not 0 < low <= high:
            raise DataError(f"crop_aspect_range must be 0 < low <= high, got {low, high}")

    @property
    def eval_crop_fraction(self) -> float:
        """The center-crop fraction actually used for evaluation and predict."""
        if self.crop_fraction is not None:
            return self.crop_fraction
        return default_crop_fraction(self.image_size)

    @property
    def mixing(self) -> bool:
        """Whether MixUp or CutMix is on (in the pipeline or deferred to the step)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def default_crop_fraction(image_size: int) -> float:
    """The EfficientNet reference's eval crop: image_size / (image_size + 32)."""
    return image_size / (image_size + 32)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a source knows about itself; the runtime sizes epochs and the head from it.

    Attributes:
      num_classes: number of classes (labels are 0..num_classes-1 after the pipeline).
      num_train: examples in the train split (before skipping bad records).
      num_eval: examples in the validation split.
      class_names: one name per class in label order, or None when the source has none.
    """

    num_classes: int
    num_train: int
    num_eval: int
    class_names: tuple[str, ...] | None = None
