"""scripts/bench_inference.py helpers: the multiply-add count and which runtime settings are timed."""

import numpy as np
import pytest

from scripts import bench_inference

onnx = pytest.importorskip("onnx", reason="onnx is in requirements-export.txt")


def _conv_matmul_model(path):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((16, 4, 3, 3), np.float32), "w")  # groups=2
    dense = numpy_helper.from_array(np.zeros((16, 5), np.float32), "d")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=2),
            helper.make_node("GlobalAveragePool", ["y"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "d"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 10, 10])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 5])],
        [weight, dense],
    )
    onnx.save(helper.make_model(graph), path)


def test_onnx_macs_counts_conv_and_matmul_multiply_adds(tmp_path):
    path = str(tmp_path / "m.onnx")
    _conv_matmul_model(path)
    # Conv: 16 x 10 x 10 outputs, each 4 input channels (8 / groups) x 3 x 3; MatMul: 16 x 5.
    assert bench_inference.onnx_macs(path) == 16 * 10 * 10 * 4 * 9 + 16 * 5


def test_slicing_settings_at_or_above_the_batch_are_not_timed_twice():
    from types import SimpleNamespace

    def runtime(path, micro_batch):
        return SimpleNamespace(path=path, micro_batch=micro_batch)

    runners = {
        "keras.applications (TF)": lambda images: images,
        "ours: onnxruntime [slices of 8]": runtime("m.onnx", 8),
        "ours: onnxruntime [whole batch]": runtime("m.onnx", None),
        "ours: litert [slices of 8]": runtime("m.tflite", 8),
    }
    assert list(bench_inference.runners_for_batch(runners, 32)) == list(runners)
    # At batch 8 one slice is the whole batch; litert has no whole-batch runtime, so it stays.
    assert list(bench_inference.runners_for_batch(runners, 8)) == [
        "keras.applications (TF)",
        "ours: onnxruntime [whole batch]",
        "ours: litert [slices of 8]",
    ]
