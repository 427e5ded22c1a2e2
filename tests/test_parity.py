"""The accuracy contract (docs/parity.md): each recipe resolves to the table's "ours" column,
each model family's data recipe reaches the pipeline, and the flags that override it work."""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import main
from dataloader import config as data_config_module
from dataloader import dataset_info, preprocessing
from dataloader.pipeline import eval_transform
from runtime import components, flags
from runtime.stages import stages_from_params
from tests.helpers import ROOT
from tests.helpers import data_fixtures as fx
from tests.helpers.launch_scripts import dry_run, main_py_args
from utils.optimizers import l2_penalty

PARITY = os.path.join(ROOT, "docs", "parity.md")
V1 = os.path.join(ROOT, "config", "efficientnet_v1", "b0_cfg.py")
V2 = os.path.join(ROOT, "config", "efficientnet_v2", "s_cfg.py")
TINY = "width_coefficient=0.1,depth_coefficient=0.1,train_img_size=32,eval_img_size=32"
RECIPES = {
    "ours v2-S": "efficientnet_v2/S/training/AMP/convergence_8xA100-80G.sh",
    "ours B0": "efficientnet_v1/B0/training/AMP/convergence_8xA100-80G.sh",
    "ours B4": "efficientnet_v1/B4/training/AMP/convergence_8xA100-80G.sh",
}
IMAGENET_TRAIN = 1_281_167


def parity_table() -> tuple[list[str], dict[str, dict[str, str]]]:
    """(column names, key -> {column: cell}) of the markdown table in docs/parity.md."""
    with open(PARITY, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return header, rows


def l2_coefficient(weight_decay: float) -> float:
    """The coefficient c of the penalty c * sum(w**2) the training loss adds."""
    w = keras.Variable(np.full((2, 3), 2.0, "float32"), name="kernel")
    return float(l2_penalty([w], weight_decay)) / 24.0


def resolved(params: dict) -> dict[str, object]:
    """Every table key's value as the run would use it."""
    train = components.data_config(params, training=True)
    evaluation = components.data_config(params, training=False)
    model = params["model"]
    randaug = params["augmenter_name"] == "randaugment"
    global_batch = params["train_batch_size"] * params["num_gpus"] * params["grad_accum_steps"]
    steps = math.ceil(IMAGENET_TRAIN / global_batch)
    assert train.resize_method == evaluation.resize_method
    return {
        "max_epochs": params["max_epochs"],
        "global_batch": global_batch,
        "optimizer": params["optimizer"],
        "rmsprop_rho": params["decay"],
        "rmsprop_momentum": params["momentum"],
        "opt_epsilon": params["opt_epsilon"],
        "lr_per_128": params["lr_init"],
        "lr_decay": params["lr_decay"],
        "lr_warmup_epochs": params["lr_warmup_epochs"],
        "lr_decay_origin": params["lr_decay_origin"],
        "l2_coefficient": round(l2_coefficient(params["weight_decay"]), 12),
        "label_smoothing": params["label_smoothing"],
        "moving_average_decay": params["moving_average_decay"],
        "bn_momentum": components.small_data_bn_momentum(params, steps),
        "bn_epsilon": model["bn_epsilon"],
        "dropout_rate": model["dropout_rate"],
        "drop_connect_rate": model["drop_connect_rate"],
        "input_normalization": model["input_normalization"],
        "augmenter": params["augmenter_name"],
        "raug_magnitude": params["raug_magnitude"] if randaug else "-",
        "base_randaug_mag": params["base_randaug_mag"]
        if randaug and params["n_stages"] > 1
        else "-",
        "mixup_alpha": train.mixup_alpha,
        "cutmix_alpha": train.cutmix_alpha,
        "n_stages": params["n_stages"],
        "stage_image_sizes": "/".join(str(s.image_size) for s in stages_from_params(params)),
        "eval_img_size": evaluation.image_size,
        "crop_area_min": train.crop_area_min,
        "crop_min_object_covered": train.crop_min_object_covered,
        "crop_max_attempts": preprocessing.CROP_MAX_ATTEMPTS,
        "eval_crop": evaluation.eval_crop,
        "eval_crop_fraction": "-"
        if evaluation.eval_crop == "squash"
        else round(evaluation.eval_crop_fraction, 3),
        "resize_method": evaluation.resize_method,
    }


def same(cell: str, value: object) -> bool:
    try:
        return math.isclose(float(cell), float(value), rel_tol=1e-9)
    except (TypeError, ValueError):
        return cell == str(value)


@pytest.fixture(scope="module")
def recipe_params(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    out = {}
    for column, script in RECIPES.items():
        result = dry_run([script], DATA_DIR=str(data), MODEL_DIR=str(data / "run"))
        assert result.returncode == 0, result.stderr
        out[column] = flags.parse(main_py_args(result.stdout))
    return out


def test_every_recipe_resolves_to_the_ours_columns_of_docs_parity(recipe_params):
    header, rows = parity_table()
    assert [c for c in header if c.startswith("ours ")][:3] == list(RECIPES)
    for column, params in recipe_params.items():
        values = resolved(params)
        assert set(rows) == set(values), "docs/parity.md rows and the resolved keys differ"
        wrong = {
            key: (rows[key][column], values[key])
            for key in rows
            if not same(rows[key][column], values[key])
        }
        assert not wrong, f"{column}: table cell vs resolved value: {wrong}"


# --- eval transform ------------------------------------------------------------------------


def photo(height=427, width=640) -> np.ndarray:
    """A non-square image with structure everywhere (gradients plus a pattern)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x * y) % 251], -1)
    return image.astype(np.uint8)


def test_v2_eval_at_384_resizes_the_whole_non_square_image_bilinear():
    params = flags.parse(["--cfg", V2, "--dataset", "synthetic"])
    cfg = components.data_config(params, training=False)
    assert (cfg.image_size, cfg.eval_crop, cfg.resize_method) == (384, "squash", "bilinear")
    image = photo()
    got = eval_transform(cfg)(tf.constant(fx.encode(image, "PNG"))).numpy()
    want = tf.image.resize(image, [384, 384], method="bilinear").numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)
    # Below 320 px v2 center-crops, as automl does.
    small = components.data_config(
        flags.parse(["--cfg", V2, "--dataset", "synthetic", "--eval_img_size", "256"]),
        training=False,
    )
    assert small.eval_crop == "crop"


def test_v1_eval_is_a_tf1_bicubic_center_crop():
    params = flags.parse(["--cfg", V1, "--dataset", "synthetic"])
    cfg = components.data_config(params, training=False)
    assert (cfg.image_size, cfg.eval_crop, cfg.resize_method) == (224, "crop", "bicubic_tf1")
    image = photo()
    side = int(224 / 256 * 427)
    top, left = (427 - side + 1) // 2, (640 - side + 1) // 2
    crop = image[top : top + side, left : left + side]
    tf1 = tf.compat.v1.image.resize_bicubic(crop[None], [224, 224], half_pixel_centers=False)
    want = np.clip(tf1[0].numpy(), 0, 255)
    got = eval_transform(cfg)(tf.constant(fx.encode(image, "PNG"))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_eval_flags_override_the_family_recipe():
    params = flags.parse(
        [
            "--cfg",
            V1,
            "--dataset",
            "synthetic",
            "--eval_crop",
            "squash",
            "--resize_method",
            "bilinear",
            "--crop_area_min",
            "0.3",
        ]
    )
    evaluation = components.data_config(params, training=False)
    train = components.data_config(params, training=True)
    assert (evaluation.eval_crop, evaluation.resize_method, train.crop_area_min) == (
        "squash",
        "bilinear",
        0.3,
    )
    v2 = flags.parse(["--cfg", V2, "--dataset", "synthetic", "--eval_crop", "crop"])
    assert components.data_config(v2, training=False).eval_crop == "crop"


def test_v2_train_crop_samples_small_windows_without_the_coverage_floor():
    params = flags.parse(["--cfg", V2, "--dataset", "synthetic"])
    cfg = components.data_config(params, training=True)
    assert (cfg.crop_area_min, cfg.crop_min_object_covered) == (0.05, 0.0)
    areas = []
    for i in range(300):
        _, _, h, w = (
            int(v)
            for v in preprocessing.random_window(
                tf.constant(300),
                tf.constant(400),
                tf.constant([i, 3]),
                cfg.crop_area_min,
                cfg.crop_aspect_range,
                0.875,
                cfg.crop_min_object_covered,
            )
        )
        areas.append(h * w / (300 * 400))
    assert min(areas) >= 0.05 - 0.01
    assert sum(a < 0.08 for a in areas) > 3  # area 0.05..0.08 is reachable


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--crop_area_min", "0"], "--crop_area_min must be in (0, 1], got 0.0"),
        (["--eval_crop", "center"], "argument --eval_crop: invalid choice: 'center'"),
        (["--resize_method", "area"], "argument --resize_method: invalid choice: 'area'"),
        (["--label_offset", "2"], "argument --label_offset: invalid choice: 2"),
        (["--lr_decay_origin", "end"], "argument --lr_decay_origin: invalid choice: 'end'"),
    ],
)
def test_bad_recipe_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        flags.parse(["--cfg", V1, "--dataset", "synthetic", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_eval_crop_names_of_the_data_config_and_the_preprocessing_agree():
    assert data_config_module.EVAL_CROPS == preprocessing.EVAL_CROPS


# --- labels and classes of ImageNet-format shards --------------------------------------------


def zero_based_shards(root: str, per_class: int = 8) -> str:
    labels = [c for c in range(3) for _ in range(per_class)]
    fx.write_tfrecords(root, "train", [labels[0::2], labels[1::2]], one_based=False)
    fx.write_tfrecords(root, "validation", [labels[::3]], one_based=False)
    return root


def test_mparams_num_classes_reaches_imagenet_shards_without_metadata(tmp_path):
    data = str(tmp_path)
    fx.write_tfrecords(data, "train", [[0, 1, 2, 3]])
    fx.write_tfrecords(data, "validation", [[0, 1]])
    params = flags.parse(["--cfg", V1, "--mparams", "num_classes=4", "--data_dir", data])
    assert dataset_info(components.data_config(params, training=True)).num_classes == 4
    # Without the request the standard ImageNet build's 1000 classes are assumed.
    default = flags.parse(["--cfg", V1, "--data_dir", data])
    assert components.data_config(default, training=True).num_classes is None


def test_zero_based_shards_stop_the_run_and_label_offset_fixes_it(tmp_path, capsys):
    data = zero_based_shards(str(tmp_path / "data"))
    argv = [
        "--cfg",
        V1,
        "--mparams",
        TINY + ",num_classes=3",
        "--data_dir",
        data,
        "--mode",
        "train",
        "--model_dir",
        str(tmp_path / "run"),
        "--no-use_xla",
    ]
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("main.py: error: 8 of 24 train records") and err.count("\n") == 1
    assert "look 0-based: pass --label_offset 0" in err
    params = flags.parse([*argv, "--label_offset", "0"])
    info = dataset_info(components.data_config(params, training=True))
    assert (info.num_classes, info.num_train, info.num_eval) == (3, 24, 8)


# --- BN momentum on small data ----------------------------------------------------------------


def test_short_epochs_lower_bn_momentum_and_say_so(caplog):
    params = flags.parse(["--cfg", V1, "--dataset", "synthetic"])
    assert params["model"]["bn_momentum"] == 0.99
    with caplog.at_level("WARNING", logger="runtime.components"):
        assert components.small_data_bn_momentum(params, 4) == pytest.approx(0.9)
        assert components.small_data_bn_momentum(params, 40) == pytest.approx(0.975)
    assert (
        "4 steps per epoch are fewer than the BN moving-average window 1/(1-0.99) = 100"
        in caplog.text
    )
    assert components.small_data_bn_momentum(params, 100) == 0.99
    caplog.clear()
    kept = flags.parse(["--cfg", V1, "--dataset", "synthetic", "--no-auto_bn_momentum"])
    with caplog.at_level("WARNING", logger="runtime.components"):
        assert components.small_data_bn_momentum(kept, 4) == 0.99
    assert "consider --mparams bn_momentum=0.9" in caplog.text
    explicit = flags.parse(["--cfg", V1, "--dataset", "synthetic", "--mparams", "bn_momentum=0.99"])
    assert components.small_data_bn_momentum(explicit, 4) == 0.99
    # v2's 0.9 already follows 10-step epochs.
    assert (
        components.small_data_bn_momentum(flags.parse(["--cfg", V2, "--dataset", "synthetic"]), 4)
        == 0.9
    )


def test_training_builds_the_model_with_the_small_data_momentum(tmp_path):
    from runtime.train import build_run

    params = flags.parse(
        [
            "--cfg",
            V1,
            "--mparams",
            TINY,
            "--dataset",
            "digits",
            "--mode",
            "train",
            "--model_dir",
            str(tmp_path),
            "--no-use_xla",
            "--train_batch_size",
            "64",
        ]
    )
    run = build_run(params)
    # 1437 digits / 64 = 23 steps per epoch: momentum 1 - 1/23 instead of 0.99.
    assert run.steps_per_epoch == 23
    momenta = [
        layer.momentum
        for layer in run.model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert momenta and momenta == pytest.approx([1 - 1 / 23] * len(momenta))
    run.log.close()


@pytest.mark.parametrize("eval_crop", ["squash", "crop"])
def test_predict_sees_a_file_as_the_eval_transform_does(tmp_path, eval_crop):
    from runtime.predict import run_predict
    from tests.helpers.tiny_run import save_random_checkpoint, tiny_params

    image = photo(60, 100)
    path = tmp_path / "wide.png"
    path.write_bytes(fx.encode(image, "PNG"))
    params = tiny_params(
        tmp_path / "run",
        "predict",
        "--predict_img_dir",
        str(path),
        "--eval_crop",
        eval_crop,
        "--resize_method",
        "bicubic",
    )
    (tmp_path / "run").mkdir()
    model = save_random_checkpoint(params)
    run_predict(params)
    with open(tmp_path / "run" / "predictions.json") as f:
        top = json.load(f)["predictions"][0]["top_k"][0]
    cfg = components.data_config(params, training=False)
    assert (cfg.eval_crop, cfg.resize_method) == (eval_crop, "bicubic")
    x = eval_transform(cfg)(tf.constant(path.read_bytes()))[None]
    probs = tf.nn.softmax(model(x, training=False)).numpy()[0]
    assert top["class_id"] == int(probs.argmax())
    assert top["probability"] == pytest.approx(float(probs.max()), rel=1e-4)
