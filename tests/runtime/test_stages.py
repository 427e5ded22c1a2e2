"""runtime/stages.py: the stage schedule of progressive resizing and the line that names a stage."""

import pytest

from runtime.stages import stage_for_epoch, stage_schedule


def test_stage_schedule_interpolates_from_base_to_final():
    stages = stage_schedule(
        10,
        4,
        image_size=(128, 300),
        raug_magnitude=(5.0, 15.0),
        mixup_alpha=(0.0, 0.3),
        cutmix_alpha=(0.1, 0.4),
    )
    assert [(s.first_epoch, s.end_epoch) for s in stages] == [(0, 2), (2, 4), (4, 6), (6, 10)]
    assert [s.image_size for s in stages] == [128, 185, 243, 300]
    assert [s.raug_magnitude for s in stages] == pytest.approx(
        [5.0, 8.3333, 11.6667, 15.0], abs=1e-4
    )
    assert [s.mixup_alpha for s in stages] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [s.cutmix_alpha for s in stages] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [stage_for_epoch(stages, e).index for e in range(11)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
        3,
        3,
    ]


def test_single_stage_uses_final_values():
    (stage,) = stage_schedule(
        3,
        1,
        image_size=(128, 224),
        raug_magnitude=(5, 10),
        mixup_alpha=(0, 0.2),
        cutmix_alpha=(0, 0),
    )
    assert (stage.first_epoch, stage.end_epoch, stage.image_size, stage.mixup_alpha) == (
        0,
        3,
        224,
        0.2,
    )


@pytest.mark.parametrize("n_stages", [0, 4])
def test_stage_count_must_fit_epochs(n_stages):
    with pytest.raises(ValueError, match="n_stages must be in 1..max_epochs=3"):
        stage_schedule(
            3,
            n_stages,
            image_size=(1, 2),
            raug_magnitude=(0, 0),
            mixup_alpha=(0, 0),
            cutmix_alpha=(0, 0),
        )


def test_stage_line_names_only_the_settings_in_effect():
    from runtime.stages import Stage, describe_stage

    stage = Stage(
        index=0,
        first_epoch=0,
        end_epoch=300,
        image_size=224,
        raug_magnitude=10.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    )
    # One image-size stage: no "stage 1/1" (a fine-tuning run cut at --unfreeze_epoch has
    # phases, not stages: before, its second half was logged as "stage 1/2: epochs 3-6").
    assert describe_stage(stage, 1, "none", False) == "epochs 1-300, image size 224"
    assert describe_stage(stage, 1, "none", False, with_epochs=False) == "image size 224"
    second_half = Stage(0, 2, 6, 64, 0.0, 0.0, 0.0)
    assert describe_stage(second_half, 1, "none", False) == "epochs 3-6, image size 64"
    mixed = Stage(
        index=1,
        first_epoch=3,
        end_epoch=6,
        image_size=128,
        raug_magnitude=5.0,
        mixup_alpha=0.2,
        cutmix_alpha=0.0,
    )
    assert describe_stage(mixed, 2, "randaugment", True) == (
        "stage 2/2: epochs 4-6, image size 128, RandAugment magnitude 5.00, mixup 0.200 (in the step)"
    )
    assert "autoaugment" in describe_stage(stage, 1, "autoaugment", False)
