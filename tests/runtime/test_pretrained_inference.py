"""--pretrained in eval / predict / export: weights used as published, recorded in model_dir.

Through main.main (in-process), as a user runs it: Google's EfficientNet-Lite0 checkpoint on
real photos shipped inside packages; `--pretrained imagenet` against a local HTTP server with a
file of keras.applications' real layout; a tiny model for what a model_dir remembers and for the
one-line errors.
"""

import hashlib
import io
import json
import os

import h5py
import keras
import numpy as np
import pytest

from model import build_model
from runtime import finetune, imagenet_weights
from runtime.errors import RunError
from runtime.imagenet_weights import FILES, WeightsFile
from scripts.photo_check import class_name
from tests.helpers.cli import assert_one_line
from tests.helpers.model_zoo import cfg_path
from tests.helpers.photos import EXPECTED, copy_photos, lite0_checkpoint
from tests.helpers.tiny_run import (
    TINY_MPARAMS,
    TWO_BLOCKS,
    save_random_checkpoint,
    tiny_args,
    tiny_params,
)
from tests.helpers.weights_server import WeightsServer

TWO = f"{TINY_MPARAMS},{TWO_BLOCKS}"  # depth plays no part in what a model_dir records


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_predict_with_the_lite0_checkpoint_names_real_photos(tmp_path, run_main):
    """Issue 21's real-photo check through main.py: the expected ImageNet class first."""
    checkpoint = lite0_checkpoint()
    names = copy_photos(tmp_path / "photos")
    run = tmp_path / "lite0"
    argv = ["--mode", "predict", "--cfg", cfg_path("lite0"), "--pretrained", checkpoint]
    argv += ["--predict_img_dir", str(tmp_path / "photos"), "--model_dir", str(run)]
    code, err = run_main([*argv, "--no-use_xla"])
    assert code == 0, err
    report, wrong = [], []
    for prediction in read_json(run / "predictions.json")["predictions"]:
        name, top = names[prediction["file"]], prediction["top_k"]
        report.append(
            f"{name}: "
            + ", ".join(f"{class_name(t['class_id'])} {t['probability']:.3f}" for t in top[:3])
        )
        if top[0]["class_id"] not in EXPECTED[name]:
            wrong.append(name)
        assert top[0]["class_name"] == class_name(top[0]["class_id"]).rsplit(" (", 1)[0]
    assert not wrong, f"wrong top-1 for {wrong}; top-3: " + "; ".join(report)
    assert len(report) == len(names)
    record = read_json(run / "params.json")  # a later eval/export needs only --model_dir
    assert record["pretrained"] == checkpoint and record["model"]["name"] == "efficientnet-lite0"


def test_a_model_dir_remembers_its_pretrained_weights(tmp_path, run_main, caplog):
    """predict --pretrained FILE on a new model_dir records it; export and eval then need only
    --model_dir and use the same weights; another --pretrained there is refused."""
    source = build_model(
        tiny_params(tmp_path / "src", "train", mparams=TWO)["model"], num_classes=10
    )
    weights = str(tmp_path / "published.weights.h5")
    source.save_weights(weights)
    run = tmp_path / "run"
    images = tmp_path / "images"
    images.mkdir()
    keras.utils.save_img(images / "a.png", np.full((40, 40, 3), 120, np.uint8))
    with caplog.at_level("INFO"):
        code, err = run_main(
            tiny_args(
                run,
                "predict",
                "--pretrained",
                weights,
                "--predict_img_dir",
                str(images),
                mparams=TWO,
            )
        )
    assert code == 0, err
    assert "using the config's 10 classes, reported as class indices" in caplog.text
    record = read_json(run / "params.json")
    assert record["pretrained"] == weights and record["mode"] == "predict"
    predicted = read_json(run / "predictions.json")
    assert predicted["weights"] == "pretrained" and weights in predicted["checkpoint"]

    code, err = run_main(["--mode", "export", "--model_dir", str(run), "--no-use_xla"])
    assert code == 0, err
    manifest = read_json(run / "export" / "export.json")
    assert manifest["weights"] == "pretrained" and manifest["artifacts"][0]["passed"]
    code, err = run_main(["--mode", "eval", "--model_dir", str(run), "--no-use_xla"])
    assert code == 0, err
    assert read_json(run / "params.json") == record  # the record is written once

    other = str(tmp_path / "other.weights.h5")
    source.save_weights(other)
    code, err = run_main(
        ["--mode", "eval", "--model_dir", str(run), "--pretrained", other, "--no-use_xla"]
    )
    assert_one_line(err, code, 2)
    assert f"holds the model of --pretrained {weights}" in err


def test_a_training_run_keeps_its_checkpoints(tmp_path, run_main):
    """The --pretrained a training run started from is not what its eval uses; giving one for
    a trained model_dir is an error."""
    weights = str(tmp_path / "start.weights.h5")
    (tmp_path / "start.weights.h5").write_bytes(b"")  # only its name is read
    params = tiny_params(tmp_path / "run", "train", "--pretrained", weights)
    assert params["pretrained"] == weights
    from runtime import components

    components.write_json(str(tmp_path / "run" / "params.json"), params)
    save_random_checkpoint(params)
    eval_params = tiny_params(tmp_path / "run", "eval")
    assert eval_params["pretrained"] is None  # the run's checkpoint is used
    code, err = run_main(
        ["--mode", "predict", "--model_dir", str(tmp_path / "run"), "--pretrained", weights]
        + ["--predict_img_dir", str(tmp_path)]
    )
    assert_one_line(err, code, 2)
    assert "holds a training run" in err and "leave --pretrained out to use its checkpoints" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--cfg", cfg_path("lite0")],
            "keras.applications publishes no efficientnet-lite0 weights",
        ),
        (["--cfg", cfg_path("xl")], "tf_efficientnetv2_xl"),
        (
            ["--cfg", cfg_path("b0"), "--predict_ckpt", "x.weights.h5"],
            "--predict_ckpt and --pretrained name two sets",
        ),
    ],
)
def test_pretrained_imagenet_flag_errors(tmp_path, main_exit, extra, message):
    argv = ["--mode", "predict", "--pretrained", "imagenet", "--predict_img_dir", str(tmp_path)]
    code, err = main_exit([*argv, "--model_dir", str(tmp_path / "run"), *extra])
    assert_one_line(err, code, 2)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_predict_says_how_it_names_the_configs_classes(tmp_path, caplog):
    """Issue 21 item 7: no class_names.json and no data set: the config's classes, and the log
    says whether they get ImageNet names (1000) or indices."""
    from runtime.class_names import trained_classes

    for classes, how in (
        (1000, "with the ImageNet-1k class names"),
        (10, "reported as class indices"),
    ):
        params = tiny_params(
            tmp_path,
            "predict",
            "--predict_img_dir",
            str(tmp_path),
            "--dataset",
            "imagenet",
            mparams=TINY_MPARAMS.replace("num_classes=10", f"num_classes={classes}"),
        )
        caplog.clear()
        with caplog.at_level("WARNING"):
            count, names = trained_classes(params)
        assert count == classes and (names is not None) == (classes == 1000)
        assert "the dataset gives no classes (" in caplog.text
        assert f"using the config's {classes} classes, {how}" in caplog.text


def test_inference_pretrained_must_be_a_file(tmp_path, main_exit):
    code, err = main_exit(tiny_args(tmp_path / "run", "export", "--pretrained", str(tmp_path)))
    assert_one_line(err, code, 2)
    assert "is not a file: --mode export takes a weights file or imagenet" in err


def test_inference_needs_the_files_classifier(tmp_path):
    source = build_model(tiny_params(tmp_path, "train")["model"], num_classes=3)
    path = str(tmp_path / "three.weights.h5")
    source.save_weights(path)
    model = build_model(tiny_params(tmp_path, "train")["model"], num_classes=10)
    with pytest.raises(RunError, match="has no classifier for this model's 10 classes"):
        finetune.load_pretrained(
            model, path, tiny_params(tmp_path, "train")["model"], inference=True
        )


# ---------------------------------------------------------------------------------------------
# --pretrained imagenet against a local server


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home" / "models"


def pin(monkeypatch, model_name, top: bytes = b"", notop: bytes = b""):
    """Pin `model_name`'s files to these bytes' MD5s (stand-ins of the published files)."""
    file = FILES[model_name]
    md5 = lambda data: hashlib.md5(data).hexdigest()  # noqa: E731
    monkeypatch.setitem(
        FILES, model_name, WeightsFile(file.stem, file.base_url, md5(top), md5(notop))
    )


def b0_file() -> bytes:
    """keras.applications' EfficientNetB0 (random weights) in the layout of efficientnetb0.h5."""

    from keras.src.legacy.saving import legacy_h5_format

    buffer = io.BytesIO()
    reference = keras.applications.EfficientNetB0(weights=None)
    with h5py.File(buffer, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    return buffer.getvalue()


def test_predict_with_imagenet_downloads_once_then_runs_offline(
    tmp_path, keras_home, monkeypatch, run_main
):
    data = b0_file()
    pin(monkeypatch, "efficientnet-b0", top=data)
    photos = tmp_path / "photos"
    copy_photos(photos)
    run = tmp_path / "run"
    argv = ["--mode", "predict", "--predict_img_dir", str(photos), "--model_dir", str(run)]
    argv += ["--eval_img_size", "64", "--no-use_xla"]
    with WeightsServer({"efficientnetb0.h5": data}) as server:
        monkeypatch.setenv(imagenet_weights.URL_ENV, server.url)
        code, err = run_main([*argv, "--cfg", cfg_path("b0"), "--pretrained", "imagenet"])
        assert code == 0, err
    assert server.requests == ["efficientnetb0.h5"]
    assert os.listdir(keras_home) == ["efficientnetb0.h5"]
    assert read_json(run / "params.json")["pretrained"] == "imagenet"
    first = read_json(run / "predictions.json")
    assert first["checkpoint"] == str(keras_home / "efficientnetb0.h5")
    # The server is gone: the same model_dir predicts again from the cache, no flags repeated.
    code, err = run_main(argv)
    assert code == 0, err
    again = read_json(run / "predictions_2.json")

    def probabilities(document):
        return [[t["probability"] for t in p["top_k"]] for p in document["predictions"]]

    assert again["checkpoint"] == first["checkpoint"]
    np.testing.assert_allclose(probabilities(again), probabilities(first), rtol=1e-5)


def test_predict_with_imagenet_offline_fails_in_one_line(
    tmp_path, keras_home, monkeypatch, run_main
):
    server = WeightsServer({})
    server.stop()
    monkeypatch.setenv(imagenet_weights.URL_ENV, server.url)
    keras.utils.save_img(tmp_path / "a.png", np.full((40, 40, 3), 120, np.uint8))
    argv = tiny_args(tmp_path / "run", "predict", "--predict_img_dir", str(tmp_path / "a.png"))
    argv[argv.index("--cfg") + 1] = cfg_path("b0")
    argv[argv.index("--mparams") + 1] = "width_coefficient=0.1,eval_img_size=32"
    code, err = run_main([*argv, "--pretrained", "imagenet"])
    assert_one_line(err, code, 2)
    assert f"cannot download {server.url}/efficientnetb0.h5 (" in err
    assert str(keras_home / "efficientnetb0.h5") in err and "pass --pretrained /path/to/" in err
    assert not keras_home.exists() or os.listdir(keras_home) == []
    assert not (tmp_path / "run").exists()  # nothing written: the download comes first


def test_training_from_imagenet_offline_fails_before_writing(
    tmp_path, keras_home, monkeypatch, run_main
):
    """The `_notop` file (digits has 10 classes) is fetched before params.json or the log."""
    server = WeightsServer({})
    server.stop()
    monkeypatch.setenv(imagenet_weights.URL_ENV, server.url)
    argv = tiny_args(tmp_path / "run", "train", "--max_epochs", "1", "--steps_per_epoch", "1")
    argv[argv.index("--cfg") + 1] = cfg_path("b0")
    code, err = run_main([*argv, "--pretrained", "imagenet"])
    assert_one_line(err, code, 2)
    assert f"cannot download {server.url}/efficientnetb0_notop.h5 (" in err
    assert not (tmp_path / "run").exists()


def test_fine_tuning_from_imagenet_takes_the_file_without_classifier(
    tmp_path, keras_home, monkeypatch
):
    """Another class count: the `_notop` file is downloaded (the classifier starts fresh)."""
    pin(monkeypatch, "efficientnet-b0", notop=b"stand-in")
    config = tiny_params(tmp_path, "train")["model"] | {"name": "efficientnet-b0"}
    model = build_model(config, num_classes=10)
    with WeightsServer({"efficientnetb0_notop.h5": b"stand-in"}) as server:
        monkeypatch.setenv(imagenet_weights.URL_ENV, server.url)
        with pytest.raises(Exception, match="efficientnetb0_notop.h5"):
            finetune.load_pretrained(model, "imagenet", config)
    assert server.requests == ["efficientnetb0_notop.h5"]
