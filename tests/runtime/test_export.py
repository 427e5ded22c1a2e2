"""--mode export (SavedModel, ONNX, LiteRT) with its self-check, and --runtime for predict / benchmark.

A tiny EfficientNetV2 at 32 px on the bundled digits; tests needing the optional export packages
(requirements-export.txt) skip, saying which one is missing.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import main
from dataloader.preprocessing import preprocess_for_eval
from runtime import export, runtimes, serving
from runtime.errors import RunError
from tests.helpers import tiny_run
from tests.helpers.tiny_run import save_random_checkpoint

# Two blocks: the converters' time grows with the layer count, and no check here depends on depth.
MPARAMS = f"{tiny_run.TINY_MPARAMS},{tiny_run.TWO_BLOCKS}"


def tiny_args(model_dir, mode, *extra):
    return tiny_run.tiny_args(model_dir, mode, *extra, mparams=MPARAMS)


def tiny_params(model_dir, mode, *extra):
    return tiny_run.tiny_params(model_dir, mode, *extra, mparams=MPARAMS)


HAVE = {m: importlib.util.find_spec(m) is not None for m in runtimes.OPTIONAL_MODULES}
FORMAT_NEEDS = {
    "saved_model": (),
    "onnx": ("tf2onnx", "onnxruntime"),
    "tflite": ("ai_edge_litert",),
}
RUNTIME_NEEDS = {
    "keras": (),
    "saved_model": (),
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai_edge_litert",),
}


def skip_without(*modules):
    missing = [runtimes.OPTIONAL_MODULES[m] for m in modules if not HAVE[m]]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -r {runtimes.REQUIREMENTS_FILE})")


def _write_digit_folder(root, count=6):
    """PNG files of digits validation images (the eval transform sees them as the dataset)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.repeat((digits.images[i] * 255 / 16).astype(np.uint8)[..., None], 3, -1)
        big = tf.image.resize(pixels, [40, 36], method="nearest").numpy().astype(np.uint8)
        (root / f"{i}.png").write_bytes(tf.io.encode_png(big).numpy())
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained-looking run (random checkpoint) exported to every format whose package is here."""
    model_dir = tmp_path_factory.mktemp("export_run")
    save_random_checkpoint(tiny_params(model_dir, "export"))
    # ONNX first: Keras' ONNX exporter needs a model that was called before (serving_model does).
    formats = [
        f for f in ("onnx", "tflite", "saved_model") if all(HAVE[m] for m in FORMAT_NEEDS[f])
    ]
    assert main.main(tiny_args(model_dir, "export", "--export_format", ",".join(formats))) == 0
    return model_dir, formats


def _manifest(model_dir):
    with open(os.path.join(model_dir, "export", runtimes.MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def test_every_format_exports_and_passes_its_self_check(exported, capsys):
    model_dir, formats = exported
    skip_without("tf2onnx", "onnxruntime", "ai_edge_litert")
    manifest = _manifest(model_dir)
    by_format = {a["format"]: a for a in manifest["artifacts"]}
    assert set(by_format) == set(formats) == {"saved_model", "onnx", "tflite"}
    for fmt in formats:
        artifact = by_format[fmt]
        assert os.path.exists(artifact["path"])
        assert artifact["passed"] and artifact["checked"] == "logits"
        assert artifact["max_abs_diff_logits"] <= export.LOGIT_TOLERANCE
        assert artifact["top1_agreement"] == 1.0
        assert artifact["check_images"] == "32 digits validation"
        assert artifact["signature"]["input"] == {
            "name": "images",
            "dtype": "float32",
            "shape": ["batch", 32, 32, 3],
            "range": "0..255 RGB, eval center crop and resize already applied",
        }
        assert artifact["signature"]["outputs"]["logits"]["shape"] == ["batch", 10]
    assert manifest["image_size"] == 32 and manifest["num_classes"] == 10
    # Atomic writes: no temporary file or folder is left next to the artifacts.
    assert not [n for n in os.listdir(model_dir / "export") if n.startswith(".tmp")]
    # The self-check is logged to the run's DLLogger log.
    with open(model_dir / "log.json", encoding="utf-8") as f:
        log = f.read()
    assert "export.model.onnx.max_abs_diff_logits" in log


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_each_runtime_predicts_the_same_top1_as_keras(exported, runtime, tmp_path):
    model_dir, _ = exported
    skip_without(*RUNTIME_NEEDS[runtime])
    folder = _write_digit_folder(tmp_path / "images")

    def top1(name):
        argv = tiny_args(
            model_dir,
            "predict",
            "--predict_img_dir",
            str(folder),
            "--runtime",
            name,
            "--predict_top_k",
            "3",
        )
        # Predict never overwrites (it writes predictions_2.json next): start from none.
        for old in model_dir.glob("predictions*.*"):
            old.unlink()
        assert main.main(argv) == 0
        with open(model_dir / "predictions.json", encoding="utf-8") as f:
            document = json.load(f)
        assert document["runtime"] == name
        return {
            p["file"]: (p["top_k"][0]["class_id"], p["top_k"][0]["probability"])
            for p in document["predictions"]
        }

    keras_top1 = top1("keras")
    other = top1(runtime)
    assert len(keras_top1) == 6 and keras_top1.keys() == other.keys()
    for file, (cls, prob) in keras_top1.items():
        assert other[file][0] == cls
        assert other[file][1] == pytest.approx(prob, abs=1e-4)


def test_inference_benchmark_with_an_exported_runtime(exported):
    model_dir, _ = exported
    skip_without("onnxruntime")
    params = tiny_params(
        model_dir,
        "inference_benchmark",
        "--runtime",
        "onnxruntime",
        "--dataset",
        "synthetic",
        "--benchmark_batch_sizes",
        "1,4",
        "--benchmark_steps",
        "3",
        "--benchmark_warmup_steps",
        "1",
    )
    from runtime.benchmark import run_inference_benchmark

    document = run_inference_benchmark({**params, "use_xla": False})
    assert document["runtime"] == "onnxruntime"
    assert document["runtime_batch"] == runtimes.DEFAULT_MICRO_BATCH["onnxruntime"]
    assert document["artifact"].endswith(os.path.join("export", "model.onnx"))
    assert [r["batch_size"] for r in document["results"]] == [1, 4]
    for row in document["results"]:
        assert row["timed_steps"] == 3
        assert row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["images_per_sec"] == pytest.approx(
            row["batch_size"] * 1000.0 / row["latency_mean_ms"]
        )


class _RecordingRuntime(runtimes.Runtime):
    def __init__(self):
        super().__init__("", (None, 2), None)
        self.calls = []

    def _run(self, images):
        self.calls.append(len(images))
        return images[:, :2, 0, 0]


def test_micro_batches_slice_the_batch_and_keep_the_order():
    images = np.random.default_rng(0).uniform(0, 255, (20, 3, 3, 3)).astype(np.float32)
    runtime = _RecordingRuntime()
    whole = runtime(images)
    runtime.micro_batch = 8
    sliced = runtime(images)
    assert runtime.calls == [20, 8, 8, 4]
    np.testing.assert_array_equal(sliced, whole)
    runtime.micro_batch, runtime.calls = 32, []
    runtime(images)
    assert runtime.calls == [20]


@pytest.mark.parametrize("runtime", ["onnxruntime", "litert"])
def test_runtime_batch_gives_the_same_logits_as_one_call(exported, runtime):
    model_dir, _ = exported
    skip_without(*RUNTIME_NEEDS[runtime])
    path = runtimes.runtime_artifact(
        {"model_dir": str(model_dir), "runtime": runtime, "export_quantize": "none"}
    )
    images = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    default = runtimes.load_runtime(runtime, path)
    assert default.micro_batch == runtimes.DEFAULT_MICRO_BATCH[runtime]
    whole = runtimes.load_runtime(runtime, path, micro_batch=0)
    assert whole.micro_batch is None
    sliced = runtimes.load_runtime(runtime, path, micro_batch=2)
    np.testing.assert_allclose(sliced(images), whole(images), rtol=1e-5, atol=1e-6)


def test_eval_transform_matches_preprocess_for_eval():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 41, 57, 3), dtype=np.uint8)
    for method in ("bilinear", "bicubic", "bicubic_tf1"):
        layer = serving.EvalTransform(24, 0.8, method)
        batched = layer(images).numpy()
        single = np.stack(
            [preprocess_for_eval(tf.constant(img), 24, 0.8, method).numpy() for img in images]
        )
        assert batched.shape == (2, 24, 24, 3)
        np.testing.assert_allclose(batched, single, atol=1e-3)


def test_export_with_preprocessing_takes_uint8_and_jpeg_bytes(tmp_path):
    skip_without("tf2onnx", "onnxruntime")
    save_random_checkpoint(tiny_params(tmp_path, "export"))
    argv = tiny_args(
        tmp_path, "export", "--export_format", "onnx,saved_model", "--export_preprocessing"
    )
    assert main.main(argv) == 0
    artifacts = {a["format"]: a for a in _manifest(tmp_path)["artifacts"]}
    for fmt, name in (
        ("saved_model", "saved_model_preprocessing"),
        ("onnx", "model_preprocessing.onnx"),
    ):
        artifact = artifacts[fmt]
        assert artifact["path"] == str(tmp_path / "export" / name)
        assert artifact["passed"] and artifact["preprocessing"] is True
        assert artifact["signature"]["input"]["dtype"] == "uint8"
        assert artifact["signature"]["input"]["shape"] == ["batch", "height", "width", 3]
    assert artifacts["saved_model"]["serve_bytes_check"]["passed"]
    # The ONNX file runs on uint8 images of another size, as the Keras eval transform does.
    import onnxruntime as ort

    session = ort.InferenceSession(artifacts["onnx"]["path"], providers=["CPUExecutionProvider"])
    image = np.random.default_rng(1).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    logits, probabilities = session.run(["logits", "probabilities"], {"images": image})
    assert logits.shape == (1, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "resize_method", [pytest.param("bilinear", marks=pytest.mark.slow), "bicubic"]
)
def test_litert_export_with_preprocessing(tmp_path, resize_method):
    """TF2 bicubic included: LiteRT has no bicubic op (before: a Flex-op traceback); the
    graph resizes with matrix products (dataloader.preprocessing.resize, portable)."""
    skip_without("ai_edge_litert")
    save_random_checkpoint(tiny_params(tmp_path, "export"))
    argv = tiny_args(tmp_path, "export", "--export_format", "tflite", "--export_preprocessing")
    assert main.main([*argv, "--resize_method", resize_method]) == 0
    (artifact,) = _manifest(tmp_path)["artifacts"]
    assert artifact["path"].endswith("model_preprocessing.tflite") and artifact["passed"]
    assert artifact["signature"]["input"]["dtype"] == "uint8"


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "dynamic_int8"])
def test_quantized_litert_export_has_its_own_tolerance(tmp_path, quantize):
    skip_without("ai_edge_litert")
    save_random_checkpoint(tiny_params(tmp_path, "export"))
    argv = tiny_args(tmp_path, "export", "--export_format", "tflite", "--export_quantize", quantize)
    assert main.main(argv) == 0
    (artifact,) = _manifest(tmp_path)["artifacts"]
    assert artifact["path"].endswith(f"model_{quantize}.tflite")
    assert artifact["checked"] == "probabilities" and artifact["passed"]
    assert artifact["tolerance"] == export.PROBABILITY_TOLERANCE[quantize]
    assert 0.0 <= artifact["top1_agreement"] <= 1.0


def test_self_check_above_tolerance_is_an_error(tmp_path, monkeypatch, capsys, caplog):
    save_random_checkpoint(tiny_params(tmp_path, "export"))
    # Every real export differs from Keras by rounding at most; a negative tolerance fails it.
    monkeypatch.setattr(export, "LOGIT_TOLERANCE", -1.0)
    caplog.set_level("INFO", logger="runtime.export")
    assert main.main(tiny_args(tmp_path, "export", "--export_format", "saved_model")) == 1
    captured = capsys.readouterr()
    # One path per line: the self-check result on stdout only, the progress note in the log only.
    check = "saved_model: max abs diff vs Keras"
    assert captured.out.count(check) == 1 and check not in captured.err
    assert not [m for m in caplog.messages if check in m]
    assert [m for m in caplog.messages if m.startswith("exporting saved_model (none) to ")]
    assert "exporting saved_model" not in captured.out
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("main.py: error: export self-check failed: saved_model (")
    assert "max abs diff of logits" in err and "> tolerance -1" in err
    (artifact,) = _manifest(tmp_path)["artifacts"]
    assert artifact["passed"] is False


def test_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    import keras

    save_random_checkpoint(tiny_params(tmp_path, "export"))

    def half_written(self, filepath, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "export", half_written)
    with pytest.raises(
        export.ExportError, match=r"tflite export to .*model.tflite failed: disk full"
    ):
        export.run_export(
            {**tiny_params(tmp_path, "export", "--export_format", "tflite"), "use_xla": False}
        )
    assert os.listdir(tmp_path / "export") == []


def test_missing_optional_package_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(
        runtimes.RuntimeUnavailable,
        match=r"^--runtime onnxruntime needs the onnxruntime package .*; "
        r"pip install -r requirements-export.txt$",
    ):
        runtimes.load_runtime("onnxruntime", "model.onnx")


def test_runtime_rejects_an_export_of_another_size(exported):
    model_dir, _ = exported
    params = tiny_params(
        model_dir,
        "predict",
        "--predict_img_dir",
        str(model_dir),
        "--runtime",
        "saved_model",
        "--eval_img_size",
        "48",
    )
    with pytest.raises(
        RunError,
        match=r"takes 32 px images, --eval_img_size is 48; "
        r"pass --eval_img_size 32 or export again",
    ):
        runtimes.open_exported(params, 10)


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main.main(argv)
    return exc.value.code, capsys.readouterr().err.strip()


def test_bad_export_and_runtime_flags_exit_2_and_write_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = _error(capsys, tiny_args(run, "export", "--export_format", "onnx,pytorch"))
    assert code == 2 and err.endswith(
        "invalid export format 'pytorch' (comma-separated subset of saved_model,onnx,tflite)"
    )
    code, err = _error(capsys, tiny_args(run, "export", "--export_quantize", "float16"))
    assert code == 2 and err == (
        "main.py: error: --export_quantize float16 applies to LiteRT "
        "only; add tflite to --export_format"
    )
    code, err = _error(
        capsys,
        tiny_args(run, "predict", "--predict_img_dir", str(tmp_path), "--runtime", "onnxruntime"),
    )
    assert code == 2 and err == (
        f"main.py: error: --runtime onnxruntime runs {run}/export/model.onnx, which does not "
        "exist; write it with --mode export --export_format onnx"
    )
    code, err = _error(capsys, tiny_args(run, "eval", "--runtime", "litert"))
    assert code == 2 and err == (
        "main.py: error: --runtime litert is for --mode predict and inference_benchmark only"
    )
    code, err = _error(capsys, tiny_args(run, "inference_benchmark", "--runtime_threads", "0"))
    assert code == 2 and err == "main.py: error: --runtime_threads must be >= 1, got 0"
    code, err = _error(capsys, tiny_args(run, "inference_benchmark", "--runtime_batch", "-1"))
    assert code == 2 and err == "main.py: error: --runtime_batch must be >= 0, got -1"
    assert not run.exists()


def test_existing_export_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "export" / "saved_model").mkdir(parents=True)
    code, err = _error(capsys, tiny_args(tmp_path, "export"))
    assert code == 2 and err == (
        f"main.py: error: {tmp_path}/export/saved_model exists; "
        "remove it or pass another --export_dir"
    )
    assert os.listdir(tmp_path) == ["export"]
