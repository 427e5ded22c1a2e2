import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dataloader.preprocessing import preprocess_for_eval
from runtime.predict import (
    PredictError,
    find_images,
    format_summary,
    predict_files,
    write_predictions,
)

NAMES = ("cat", "dog", "fish", "owl")


def _write_images(root):
    """Real JPEG and PNG files at several depths, plus files predict must skip or report."""
    rng = np.random.default_rng(0)
    made = []
    for rel, encode in (
        ("a.jpg", tf.io.encode_jpeg),
        ("sub/b.PNG", tf.io.encode_png),
        ("sub/deeper/c.jpeg", tf.io.encode_jpeg),
        ("sub/deeper/d.png", tf.io.encode_png),
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(20, 50))
        pixels = rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)
        path.write_bytes(encode(pixels).numpy())
        made.append(rel)
    (root / "sub" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "e.jpg").write_bytes(
        tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()
    )
    return made


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(len(NAMES))(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_find_images_recurses_and_filters(tmp_path):
    made = _write_images(tmp_path)
    found = [os.path.relpath(f, tmp_path) for f in find_images(str(tmp_path))]
    assert found == sorted(made + ["empty.png", "sub/broken.jpg"])
    assert find_images(str(tmp_path / "a.jpg")) == [str(tmp_path / "a.jpg")]


def test_find_images_errors(tmp_path):
    with pytest.raises(PredictError, match="does not exist"):
        find_images(str(tmp_path / "nope"))
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(PredictError, match="holds no .jpg/.jpeg/.png file"):
        find_images(str(tmp_path))
    with pytest.raises(PredictError, match="needs --predict_img_dir"):
        find_images(None)


def test_predict_files_and_outputs(tmp_path, capsys):
    images = tmp_path / "images"
    made = _write_images(images)
    model = _model()
    files = find_images(str(images))
    preds, bad = predict_files(
        model,
        files,
        image_size=32,
        crop_fraction=0.875,
        batch_size=3,
        top_k=3,
        class_names=NAMES,
        relative_to=str(images),
        progress=False,
    )
    assert [p.file for p in preds] == sorted(made)
    assert sorted(b["file"] for b in bad) == ["empty.png", os.path.join("sub", "broken.jpg")]
    errors = {b["file"]: b["error"] for b in bad}
    assert errors["empty.png"] == "Input is empty."
    assert errors[os.path.join("sub", "broken.jpg")].startswith("Unknown image file format")
    # Same numbers as preprocessing + forward + softmax done by hand.
    for pred in preds:
        image = preprocess_for_eval(tf.io.read_file(str(images / pred.file)), 32, 0.875)
        probs = tf.nn.softmax(model(image[None])).numpy()[0]
        order = np.argsort(-probs)[:3]
        assert pred.classes == tuple(order)
        assert pred.names == tuple(NAMES[i] for i in order)
        np.testing.assert_allclose(pred.probabilities, probs[order], rtol=1e-5)

    out = tmp_path / "model_dir"
    csv_path, json_path = write_predictions(str(out), preds, bad, extra={"checkpoint": "ckpt-3"})
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(made)
    first = [r for r in rows if r["file"] == "a.jpg"]
    assert [int(r["rank"]) for r in first] == [1, 2, 3]
    assert [r["class_name"] for r in first] == list(preds[0].names)
    assert float(first[0]["probability"]) == pytest.approx(preds[0].probabilities[0], abs=1e-6)
    with open(json_path) as f:
        doc = json.load(f)
    assert doc["checkpoint"] == "ckpt-3"
    assert (doc["num_files"], doc["num_predicted"], doc["num_unreadable"]) == (6, 4, 2)
    assert doc["predictions"][0]["file"] == "a.jpg"
    assert [e["class_id"] for e in doc["predictions"][0]["top_k"]] == list(preds[0].classes)
    assert {u["file"] for u in doc["unreadable"]} == {"empty.png", "sub/broken.jpg"}
    assert not [f for f in os.listdir(out) if ".tmp" in f]

    summary = format_summary(preds, bad, max_rows=2)
    assert "... 2 more files" in summary
    assert "4 file(s) classified, 2 unreadable skipped" in summary
    assert "unreadable: sub/broken.jpg" in summary


def test_single_file_and_fewer_classes_than_k(tmp_path):
    _write_images(tmp_path)
    preds, bad = predict_files(
        _model(),
        find_images(str(tmp_path / "a.jpg")),
        image_size=32,
        crop_fraction=None,
        top_k=10,
        progress=False,
    )
    assert bad == [] and len(preds) == 1
    assert len(preds[0].classes) == len(NAMES)  # k capped at the number of classes
    assert preds[0].names == tuple(str(c) for c in preds[0].classes)
    assert sum(preds[0].probabilities) == pytest.approx(1.0, rel=1e-5)


def test_class_names_must_match_model(tmp_path):
    _write_images(tmp_path)
    with pytest.raises(PredictError, match="3 class names for a model with 4 classes"):
        predict_files(_model(), [str(tmp_path / "a.jpg")], 32, 0.875, class_names=NAMES[:3])


def test_run_predict_end_to_end(tmp_path, capsys):
    from runtime.class_names import save_class_names
    from runtime.predict import run_predict
    from tests.tiny_run import save_random_checkpoint, tiny_params

    images = tmp_path / "images"
    made = _write_images(images)
    model_dir = tmp_path / "run"
    params = tiny_params(
        model_dir, "predict", "--predict_img_dir", str(images), "--predict_batch_size", "2"
    )
    model_dir.mkdir()
    save_class_names(str(model_dir), 10, [f"digit{i}" for i in range(10)])
    model = save_random_checkpoint(params)
    model.save_weights(str(tmp_path / "final.weights.h5"))
    result = run_predict(params)
    assert (result["num_files"], result["num_predicted"], result["num_unreadable"]) == (6, 4, 2)
    out = capsys.readouterr().out
    assert "4 file(s) classified, 2 unreadable skipped" in out
    assert f"predictions written to {model_dir / 'predictions.csv'}" in out
    with open(model_dir / "predictions.json") as f:
        doc = json.load(f)
    assert [p["file"] for p in doc["predictions"]] == sorted(made)
    assert doc["checkpoint"].endswith("ckpt-1") and doc["image_size"] == 32
    for entry in doc["predictions"]:
        assert len(entry["top_k"]) == 5
        assert all(e["class_name"] == f"digit{e['class_id']}" for e in entry["top_k"])
        probs = [e["probability"] for e in entry["top_k"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6

    # A single image and an explicit .weights.h5 give the same numbers for that file; the
    # second run writes new files instead of overwriting the first run's.
    first_csv = (model_dir / "predictions.csv").read_text()
    single = tiny_params(
        model_dir,
        "predict",
        "--predict_img_dir",
        str(images / "a.jpg"),
        "--predict_ckpt",
        str(tmp_path / "final.weights.h5"),
    )
    again = run_predict(single)
    assert again["num_predicted"] == 1
    assert (again["csv"], again["json"]) == (
        str(model_dir / "predictions_2.csv"),
        str(model_dir / "predictions_2.json"),
    )
    assert (model_dir / "predictions.csv").read_text() == first_csv
    with open(model_dir / "predictions.json") as f:
        assert len(json.load(f)["predictions"]) == 4
    with open(model_dir / "predictions_2.json") as f:
        one = json.load(f)["predictions"]
    assert one[0]["file"] == str(images / "a.jpg")
    assert one[0]["top_k"] == doc["predictions"][0]["top_k"]


def test_predict_bad_inputs_exit_codes(tmp_path, capsys):
    import main
    from tests.tiny_run import tiny_args

    with pytest.raises(SystemExit) as exc:  # flag errors exit before anything is written
        main.main(tiny_args(tmp_path, "predict", "--predict_img_dir", str(tmp_path / "missing")))
    assert exc.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"--predict_img_dir {tmp_path / 'missing'} does not exist")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    assert main.main(tiny_args(tmp_path, "predict", "--predict_img_dir", str(empty))) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"main.py: error: --predict_img_dir {str(empty)!r} holds no .jpg/.jpeg/.png file"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jpg").write_bytes(b"garbage")
    from tests.tiny_run import save_random_checkpoint, tiny_params

    save_random_checkpoint(tiny_params(tmp_path, "predict", "--predict_img_dir", str(broken)))
    assert main.main(tiny_args(tmp_path, "predict", "--predict_img_dir", str(broken))) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        f"main.py: error: none of the 1 image file(s) under {broken} could be decoded"
    )
    assert "unreadable: x.jpg" in captured.out


def test_output_paths_take_the_next_free_number(tmp_path):
    from runtime.predict import output_paths

    assert output_paths(str(tmp_path)) == (
        str(tmp_path / "predictions.csv"),
        str(tmp_path / "predictions.json"),
    )
    (tmp_path / "predictions.json").write_text("{}")  # either file taken: both move on
    (tmp_path / "predictions_2.csv").write_text("")
    assert output_paths(str(tmp_path)) == (
        str(tmp_path / "predictions_3.csv"),
        str(tmp_path / "predictions_3.json"),
    )


def test_imagenet_models_get_human_readable_names(tmp_path):
    from runtime.class_names import class_names_for, save_class_names, trained_classes
    from tests.tiny_run import tiny_params

    names = class_names_for(1000, None)
    assert (
        len(names) == 1000 and names[:2] == ("tench", "goldfish") and names[999] == "toilet paper"
    )
    assert class_names_for(10, None) is None and class_names_for(3, ["a", "b", "c"]) == (
        "a",
        "b",
        "c",
    )
    save_class_names(str(tmp_path), 1000, None)  # e.g. imported weights, TFRecords without names
    params = tiny_params(tmp_path, "predict", "--predict_img_dir", str(tmp_path))
    assert trained_classes(params)[1][1] == "goldfish"


def test_class_names_fallbacks_without_class_names_json(tmp_path):
    from runtime.class_names import save_class_names, trained_classes
    from tests.tiny_run import tiny_params

    images = tmp_path / "images"
    _write_images(images)
    digits = tiny_params(tmp_path, "predict", "--predict_img_dir", str(images))
    num_classes, names = trained_classes(digits)  # from --dataset digits
    assert num_classes == 10 and (names is None or len(names) == 10)
    imagenet = tiny_params(
        tmp_path, "predict", "--predict_img_dir", str(images), "--dataset", "imagenet"
    )
    assert trained_classes(imagenet) == (10, None)  # no data_dir: the config's count
    save_class_names(str(tmp_path), 3, ["a", "b", "c"])
    assert trained_classes(imagenet) == (3, ("a", "b", "c"))  # what training saved wins
