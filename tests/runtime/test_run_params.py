"""Run-reading modes start from model_dir/params.json; overrides; wrong-model checkpoints."""

import json
import os

import pytest

import main
from runtime import flags, run_params
from runtime.components import write_json
from tests.helpers.cli import assert_one_line
from tests.helpers.tiny_run import save_random_checkpoint, tiny_args, tiny_params


def trained_run(tmp_path, *extra):
    """A model_dir holding the params.json a tiny training run writes."""
    params = tiny_params(
        tmp_path, "train", "--eval_img_size", "40", "--crop_fraction", "0.5", *extra
    )
    write_json(str(tmp_path / run_params.PARAMS_FILE), params)
    return params


def test_eval_needs_only_model_dir(tmp_path):
    trained = trained_run(tmp_path)
    params = flags.parse(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert params["model"] == json.loads(json.dumps(trained["model"]))
    for key in ("dataset", "eval_img_size", "crop_fraction", "cfg", "train_img_size"):
        assert params[key] == trained[key], key
    assert params["mode"] == "eval" and params["use_xla"] is None  # never inherited


def test_command_line_overrides_the_saved_run(tmp_path):
    trained_run(tmp_path)
    params = flags.parse(
        [
            "--mode",
            "eval",
            "--model_dir",
            str(tmp_path),
            "--eval_batch_size",
            "7",
            "--crop_fraction",
            "0.9",
            "--mparams",
            "dropout_rate=0.5",
        ]
    )
    assert (params["eval_batch_size"], params["crop_fraction"]) == (7, 0.9)
    assert params["model"]["dropout_rate"] == 0.5
    # A --no- boolean given on the command line overrides a saved True.
    trained_run(tmp_path / "b", "--cache")
    assert (
        flags.parse(
            ["--mode", "inference_benchmark", "--model_dir", str(tmp_path / "b"), "--no-cache"]
        )["cache"]
        is False
    )
    assert (
        flags.parse(["--mode", "inference_benchmark", "--model_dir", str(tmp_path / "b")])["cache"]
        is True
    )


def test_architecture_override_is_refused_in_one_line(tmp_path, main_exit):
    trained_run(tmp_path)
    code, err = main_exit(
        ["--mode", "eval", "--model_dir", str(tmp_path), "--mparams", "width_coefficient=0.2"],
    )
    assert code == 2 and err.count("\n") == 1
    assert err == (
        f"main.py: error: --mparams would change the architecture of the model "
        f"trained in {tmp_path} (width_coefficient: 0.1 -> 0.2); leave them out to "
        "use the run's params.json, or use another --model_dir\n"
    )
    code, err = main_exit(
        [
            "--mode",
            "predict",
            "--model_dir",
            str(tmp_path),
            "--predict_img_dir",
            str(tmp_path),
            "--cfg",
            "config/efficientnet_v1/b0_cfg.py",
        ],
    )
    assert code == 2 and "--cfg would change the architecture" in err and "name: " in err


def test_a_missing_model_dir_is_named_not_a_missing_cfg(tmp_path, main_exit):
    missing = tmp_path / "does_not_exist"
    code, err = main_exit(["--mode", "eval", "--model_dir", str(missing)])
    assert_one_line(err, code, 2)
    assert (
        f"--model_dir {missing} does not exist: give the --model_dir of a training run, or "
        "--cfg (and --mparams) to eval without one" in err
    )
    assert not missing.exists()


def test_a_model_dir_without_params_json_says_so(tmp_path, main_exit):
    (tmp_path / "photos").mkdir()
    code, err = main_exit(
        ["--mode", "predict", "--model_dir", str(tmp_path), "--predict_img_dir", str(tmp_path)]
    )
    assert_one_line(err, code, 2)
    assert f"--model_dir {tmp_path} holds no params.json (not a training run)" in err
    assert "to predict without one" in err
    assert sorted(os.listdir(tmp_path)) == ["photos"]


def test_training_modes_do_not_read_params_json(tmp_path):
    trained_run(tmp_path, "--max_epochs", "7")
    assert flags.parse(tiny_args(tmp_path, "train"))["max_epochs"] == 300
    assert set(run_params.RUN_READING_MODES) >= {
        "eval",
        "predict",
        "export",
        "training_benchmark",
        "inference_benchmark",
    }


def test_broken_params_json_is_one_line(tmp_path, main_exit):
    (tmp_path / "params.json").write_text("{not json")
    code, err = main_exit(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert code == 2 and err.startswith(f"main.py: error: cannot read {tmp_path}/params.json")


def test_architecture_keys_are_the_model_keys_that_matter():
    from model.schema import MODEL_KEYS

    assert set(run_params.ARCHITECTURE_KEYS) == set(MODEL_KEYS) - {
        "dropout_rate",
        "drop_connect_rate",
        "bn_momentum",
    }


def test_wrong_model_checkpoint_is_one_line_without_tf_warnings(tmp_path, capsys, caplog):
    """Restoring a checkpoint of another architecture: one line, none of TF's per-variable
    "Value in checkpoint could not be found" warnings (hundreds for a real model)."""
    other = tiny_params(
        tmp_path / "other",
        "train",
        "--mparams",
        "width_coefficient=0.2,depth_coefficient=0.1,train_img_size=32,"
        "eval_img_size=32,num_classes=10",
    )
    save_random_checkpoint(other)
    trained_run(tmp_path / "run")
    code = main.main(
        [
            "--mode",
            "eval",
            "--model_dir",
            str(tmp_path / "run"),
            "--predict_ckpt",
            os.path.join(tmp_path, "other", "checkpoints"),
        ]
    )
    import gc

    gc.collect()
    err = capsys.readouterr().err
    assert code == 1 and err.count("main.py: error:") == 1
    assert "does not fit this model" in err and "another architecture or class count" in err
    assert "could not be found" not in caplog.text + err


# ---------------------------------------------------------------------------------------------
# A hand-edited params.json is checked like the command line (issue 20)


def edited_run(tmp_path, **edits):
    """A trained run's params.json with `edits` applied to the saved values."""
    trained = json.loads(json.dumps(trained_run(tmp_path)))
    with open(tmp_path / run_params.PARAMS_FILE, "w") as f:
        json.dump({**trained, **edits}, f)
    return str(tmp_path / run_params.PARAMS_FILE)


@pytest.mark.parametrize(
    "edit, problem",
    [
        # Before: a TypeError traceback when the mode compared or used the value.
        ({"eval_batch_size": "100"}, 'must be an integer, got "100"'),
        ({"eval_batch_size": 12.5}, "must be an integer, got 12.5"),
        ({"dataset": 5}, "must be the flag's text (a string, or a list"),
        # Before: "no" is a true string, and the run silently used mixed_float16.
        ({"use_amp": "no"}, 'must be true or false, got "no"'),
        ({"eval_batch_size": None}, "must not be null"),
        (
            {"optimizer": "rmsprp"},
            'must be one of rmsprop, sgd, momentum, adam, adamw, lamb, got "rmsprp"',
        ),
        ({"dataset": "imagenet2"}, "is not a valid --dataset value: invalid dataset 'imagenet2'"),
        ({"export_format": ["onnx", "pdf"]}, "invalid export format 'pdf'"),
        ({"label_offset": 2}, "must be one of 0, 1, got 2"),
    ],
)
def test_a_bad_saved_value_exits_2_naming_the_key_and_the_file(tmp_path, main_exit, edit, problem):
    path = edited_run(tmp_path, **edit)
    (key,) = edit
    code, err = main_exit(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert_one_line(err, code, 2)
    assert err.startswith(f'main.py: error: "{key}" in {path} ') and problem in err
    assert f"fix the file, or override it with --{key}" in err


def test_saved_values_get_the_range_checks_of_their_flags(tmp_path, main_exit):
    path = edited_run(tmp_path, eval_batch_size=0, crop_fraction=1.5)
    code, err = main_exit(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert_one_line(err, code, 2)
    assert f'"eval_batch_size" in {path}: --eval_batch_size must be >= 1, got 0' in err
    # The model config goes through model.schema, the one validator of its values.
    trained = json.load(open(path))
    edited_run(tmp_path, model={**trained["model"], "width_coefficient": "abc"})
    code, err = main_exit(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert_one_line(err, code, 2)
    assert f'"model" in {path}: width_coefficient must be a positive number' in err


def test_a_bad_saved_value_overridden_on_the_command_line_is_not_used(tmp_path):
    edited_run(tmp_path, eval_batch_size="100", use_amp="no", lr_init=1)
    params = flags.parse(
        ["--mode", "eval", "--model_dir", str(tmp_path), "--eval_batch_size", "7", "--no-use_amp"]
    )
    assert (params["eval_batch_size"], params["use_amp"]) == (7, False)
    assert params["lr_init"] == 1.0 and isinstance(params["lr_init"], float)


def test_a_key_that_is_no_flag_is_an_error_with_the_closest_flag(tmp_path, main_exit):
    """Before: dropped without a word, so a typo'd edit silently kept the trained value."""
    path = edited_run(tmp_path, eval_bach_size=50)
    code, err = main_exit(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert_one_line(err, code, 2)
    assert f'"eval_bach_size" in {path} is not a flag (did you mean "eval_batch_size"?)' in err
    edited_run(tmp_path, colour="blue")
    code, err = main_exit(["--mode", "eval", "--model_dir", str(tmp_path)])
    assert_one_line(err, code, 2)
    assert err.endswith("is not a flag; rename or remove it\n")
    # What training adds besides the flags is no flag, and fine.
    edited_run(tmp_path, derived={"steps_per_epoch": 3})
    assert flags.parse(["--mode", "eval", "--model_dir", str(tmp_path)])["eval_batch_size"] == 100
