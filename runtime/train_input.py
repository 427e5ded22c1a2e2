"""The training input of a stage: the distributed, repeated train pipeline, and per-epoch seeds.

Seeded runs (`--seed`) build each epoch's pipeline from its own data seed (`epoch_data_seed`),
so a resumed run reads epoch k exactly as the uninterrupted run did; a run resumed in the
middle of an epoch skips the batches of the steps the checkpoint had already trained. Unseeded
runs read one stream per stage (no restart cost) and are not reproducible by design: resumed
mid-epoch, they train the epoch's remaining steps on a new stream.

NOTE: resuming skips batches (`Dataset.skip` on each worker's pipeline) instead of
checkpointing the iterator. A checkpoint of our train pipeline's iterator cannot be written:
tf.data refuses to serialize it (FailedPreconditionError: "LookupTableInsertV2 is stateful",
the bad-record counter of dataloader/skipping.py); it would also hold the shuffle buffer (10,000
serialized records, about 1.1 GB of ImageNet JPEGs per worker and checkpoint). Skipping
reproduces the data order exactly, bad records and mixing seeds included; each skipped batch
costs what producing it costs: measured 39 ms per skipped batch against 38 ms per batch of the
running pipeline (224 px + RandAugment, batch 32, 2 CPU cores; `python scripts/bench_resume.py`,
2026-12-03). Where the input keeps up with the accelerator that is at most the time of training
those steps, once per resume.
"""

from __future__ import annotations

import logging

from dataloader import build_dataset
from runtime.components import data_config
from runtime.run_params import TRAINING_MODES
from runtime.stages import Stage, describe_stage

logger = logging.getLogger(__name__)


def epoch_data_seed(seed: int | None, epoch: int | None) -> int | None:
    """The data seed (shuffle, augmentation, mixing) of 0-based `epoch` of a run seeded `seed`.

    A function of (seed, epoch) only, so a resumed run reads epoch k exactly as the
    uninterrupted run did; None when the run is not seeded or no epoch is given.
    """
    if seed is None or epoch is None:
        return seed
    return seed + 7919 * (epoch + 1)


def train_dataset(
    run, stage: Stage, epoch: int | None = None, announce: bool = True, skip_steps: int = 0
):
    """The distributed, repeated train input of `stage` ([A, B, ...] batches with accumulation).

    Args:
      run: the runtime.train.TrainRun.
      stage: the stage whose image size, augmentation and mixing the input has.
      epoch: with it (seeded runs) the data seed is that epoch's (`epoch_data_seed`).
      announce: log the stage's settings.
      skip_steps: steps of the epoch already trained (a mid-epoch resume): their batches are
        read and dropped.
    """
    params = run.params
    defer = params["defer_img_mixing"]
    cfg = data_config(
        params,
        training=True,
        image_size=stage.image_size,
        raug_magnitude=stage.raug_magnitude,
        mixup_alpha=stage.mixup_alpha,
        cutmix_alpha=stage.cutmix_alpha,
        seed=epoch_data_seed(params["seed"], epoch),
    )
    accum = run.step_config.grad_accum_steps

    def dataset_fn(input_context):
        dataset = build_dataset(cfg, "train", input_context=input_context, repeat=True)
        if accum > 1:
            dataset = dataset.batch(accum, drop_remainder=True)
        return dataset.skip(skip_steps) if skip_steps else dataset

    if announce:
        logger.info(
            "%s",
            describe_stage(
                stage,
                params["n_stages"],
                params["augmenter_name"],
                defer,
                with_epochs=params["mode"] in TRAINING_MODES,
            ),
        )
    if skip_steps:
        logger.info("skipping the %d batch(es) of the steps trained before the resume", skip_steps)
    return run.dist.strategy.distribute_datasets_from_function(dataset_fn)
