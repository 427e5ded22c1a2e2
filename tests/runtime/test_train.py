"""runtime/train.py: building a run (the derived values written to params.json)."""

import pytest


def test_params_json_gets_the_derived_values_once_the_strategy_exists(tmp_path):
    import json

    from runtime import train
    from tests.helpers.tiny_run import tiny_params

    params = tiny_params(
        tmp_path,
        "train",
        "--max_epochs",
        "4",
        "--train_batch_size",
        "16",
        "--lr_warmup_epochs",
        "1",
        "--n_stages",
        "2",
        "--base_img_size",
        "24",
    )
    run = train.build_run(params)
    run.log.close()
    with open(tmp_path / "params.json") as f:
        derived = json.load(f)["derived"]
    assert derived["num_replicas"] == 1 and derived["num_workers"] == 1
    assert derived["global_batch_size"] == 16
    assert derived["steps_per_epoch"] == run.steps_per_epoch > 1
    assert derived["total_steps"] == 4 * run.steps_per_epoch
    assert derived["peak_lr"] == pytest.approx(params["lr_init"] * 16 / 128)
    assert [s["epochs"] for s in derived["stages"]] == [[1, 2], [3, 4]]
    assert [s["image_size"] for s in derived["stages"]] == [24, 32]
