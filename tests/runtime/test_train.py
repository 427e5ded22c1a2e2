"""runtime/train.py: building a run (the derived values written to params.json)."""

import pytest


def test_params_json_gets_the_derived_values_once_the_strategy_exists(tmp_path, caplog):
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
    with caplog.at_level("INFO", logger="runtime.train"):
        run = train.build_run(params)
    run.log.close()
    with open(tmp_path / "params.json") as f:
        derived = json.load(f)["derived"]
    assert derived["num_replicas"] == 1 and derived["num_workers"] == 1
    assert derived["global_batch_size"] == 16
    assert derived["steps_per_epoch"] == run.steps_per_epoch > 1
    assert derived["total_steps"] == 4 * run.steps_per_epoch
    assert derived["peak_lr"] == pytest.approx(params["lr_init"] * 16 / 128)
    assert 0 <= derived["final_lr"] < derived["peak_lr"]
    # The log says which learning rate is used and why (--lr_init is per 128 images).
    assert (
        f"learning rate: peak {derived['peak_lr']:.6g} = --lr_init 0.008 x global batch 16 / 128 "
        "(--lr_init is the rate for a batch of 128" in caplog.text
    )
    assert [s["epochs"] for s in derived["stages"]] == [[1, 2], [3, 4]]
    assert [s["image_size"] for s in derived["stages"]] == [24, 32]
