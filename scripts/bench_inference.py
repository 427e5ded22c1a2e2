"""CPU inference benchmark: our EfficientNet through every runtime vs keras.applications (and timm).

    python scripts/bench_inference.py                     # B0 @ 224 and V2-S @ 384, batch 1 and 32
    python scripts/bench_inference.py --models b0 --batch_sizes 1 --steps 10

For each model, our network (random weights: speed does not depend on them) is exported with
runtime.export to a temporary folder (SavedModel, ONNX, LiteRT; optionally a dynamic-range int8
LiteRT file) and timed next to keras.applications' EfficientNet (TensorFlow backend) and, when
torch and timm are installed, timm's (PyTorch CPU) in channels_last memory format, the fast one
on CPU (`--timm_layouts channels_last,nchw` adds the NCHW row). PyTorch runs in its own process
(scripts/torch_peer.py), never next to TensorFlow, and times its own calls. Runtimes take
turns: `--rounds` rounds of
`--steps` calls each, so a change in machine load hits every runtime alike; after one untimed
warm-up call per runtime. Latency is one call on a host batch (random 0..255 images); img/s is
batch / median latency. ONNX Runtime and LiteRT are timed at each `--runtime_batches` setting
(`--runtime_batch`: slices of N images per call, 0 = the whole batch in one call). GFLOP/s is
2 x the multiply-adds of our ONNX graph's Conv and MatMul nodes x img/s, next to this machine's
numpy float32 matrix-multiply rate (a reference for what the cores can do). Prints a Markdown
table (docs/deployment.md has the one we measured).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from scripts.torch_peer import LAYOUTS, PeerError, TorchPeer  # noqa: E402

MODELS = {
    # name: (our config, image size, keras.applications constructor, timm model name)
    "b0": ("config/efficientnet_v1/b0_cfg.py", 224, "EfficientNetB0", "efficientnet_b0"),
    "v2s": ("config/efficientnet_v2/s_cfg.py", 384, "EfficientNetV2S", "tf_efficientnetv2_s"),
}
BASELINE = "keras.applications (TF)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "unknown"


def onnx_macs(path: str) -> int:
    """Multiply-adds of one image through the Conv and MatMul nodes of an ONNX file."""
    import onnx

    model = onnx.load(path)
    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.input, *graph.output]
    }
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":  # weight [Cout, Cin/groups, kh, kw], output [1, Cout, H, W]
            weight, out = shapes[node.input[1]], shapes[node.output[0]]
            macs += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif node.op_type == "MatMul":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            macs += int(np.prod(a[1:])) * int(b[-1])
    return macs


def sgemm_gflops(size: int = 4096, calls: int = 5) -> float:
    """Median float32 matrix-multiply GFLOP/s of numpy's BLAS on all cores."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / np.median(times) / 1e9


def tf_runner(model):
    """A Keras model in a tf.function (no XLA: slower on CPU), numpy in, numpy out."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda images: np.asarray(forward(tf.constant(images)))


def timm_peers(
    key: str, batch: int, threads: int | None, layouts: list[str]
) -> dict[str, TorchPeer]:
    """{label: timm model in its own process} per memory layout; {} without torch / timm."""
    if not (importlib.util.find_spec("timm") and importlib.util.find_spec("torch")):
        return {}
    _, size, _, timm_name = MODELS[key]
    peers = {}
    for layout in layouts:
        try:
            peers[f"timm (PyTorch, {layout})"] = TorchPeer(
                timm_name, batch, size, layout=layout, threads=threads
            )
        except PeerError as err:
            print(f"  timm ({layout}): not run: {err}", flush=True)
    return peers


def build_runners(
    key: str, workdir: str, threads: int | None, int8: bool, runtime_batches: list[int]
) -> tuple[dict, int]:
    """({runtime label: callable(images)}, multiply-adds per image) for one model, exporting ours
    into `workdir`. A runtime timed at several --runtime_batch settings gets one label each
    ("... [slices of 8]", "... [whole batch]")."""
    import keras

    from config.loader import load_config
    from model import build_model
    from runtime import export, runtimes
    from runtime.serving import serving_model

    cfg_path, size, app_name, _ = MODELS[key]
    config = load_config(cfg_path, None)
    keras.utils.set_random_seed(0)
    ours = build_model(config, num_classes=1000)
    serving = serving_model(ours, size, size / (size + 32))
    runners = {
        BASELINE: tf_runner(
            getattr(keras.applications, app_name)(weights=None, input_shape=(size, size, 3))
        )
    }
    runners["ours: keras (TF)"] = runtimes.KerasRuntime(ours)
    check = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    plan = [
        ("saved_model", "none", "saved_model"),
        ("onnx", "none", "onnxruntime"),
        ("tflite", "none", "litert"),
    ]
    if int8:
        plan.append(("tflite", "dynamic_int8", "litert"))
    for fmt, quantize, runtime_name in plan:
        path = os.path.join(workdir, f"{key}_{runtimes.artifact_name(fmt, quantize)}")
        start = time.perf_counter()
        export.write_artifact(fmt, serving, path, quantize)
        diff = export.verify_artifact(fmt, path, serving, check, quantize, False)
        label = f"ours: {runtime_name}" + ("" if quantize == "none" else f" ({quantize})")
        print(
            f"  {label}: exported in {time.perf_counter() - start:.0f} s, max abs logit diff "
            f"vs Keras {diff['max_abs_diff_logits']:.2g}",
            flush=True,
        )
        if fmt == "onnx":
            macs = onnx_macs(path)
        if runtime_name == "saved_model":
            runners[label] = runtimes.load_runtime(runtime_name, path, threads)
            continue
        for micro in runtime_batches:
            slices = f"slices of {micro}" if micro else "whole batch"
            runners[f"{label} [{slices}]"] = runtimes.load_runtime(
                runtime_name, path, threads, micro
            )
    return runners, macs


def runners_for_batch(runners: dict, batch: int) -> dict:
    """The runners worth timing at `batch`: a runtime sliced into `micro_batch` >= batch makes one
    call, the same as the whole batch, so it is left out when a whole-batch runtime of the same
    file is there."""
    whole = {run.path for run in runners.values() if getattr(run, "micro_batch", 0) is None}
    return {
        label: run
        for label, run in runners.items()
        if not ((getattr(run, "micro_batch", None) or 0) >= batch and run.path in whole)
    }


def measure(runners: dict, images: np.ndarray, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, rounds alternating between them (a TorchPeer times its
    calls in its own process, on its own random batch of the same shape)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up: tracing, memory planning
        if isinstance(run, TorchPeer):
            run.warmup(1)
        else:
            run(images)
    for _ in range(rounds):
        for name, run in runners.items():
            if isinstance(run, TorchPeer):
                times[name].extend(run.time_calls(steps))
                continue
            for _ in range(steps):
                start = time.perf_counter()
                run(images)
                times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="b0,v2s", help=f"comma-separated: {','.join(MODELS)}")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed calls per runtime per round (default: 10 at batch 1, 2 above)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime / litert / torch threads (default: all cores)",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a dynamic-range int8 LiteRT file",
    )
    parser.add_argument(
        "--timm_layouts",
        default="channels_last",
        help="timm memory layouts to time, comma-separated: channels_last, nchw",
    )
    parser.add_argument(
        "--runtime_batches",
        default="8,0",
        help="--runtime_batch settings to time ONNX Runtime and LiteRT at (0: whole batch)",
    )
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {','.join(unknown)}; choose from {','.join(MODELS)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    layouts = [v for v in args.timm_layouts.split(",") if v]
    if any(v not in LAYOUTS for v in layouts):
        parser.error(f"unknown --timm_layouts {args.timm_layouts}; choose from {','.join(LAYOUTS)}")
    runtime_batches = [int(b) for b in args.runtime_batches.split(",")]

    import keras
    import tensorflow as tf

    print(
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU: {cpu_name()}, "
        f"{os.cpu_count()} cores; TF {tf.__version__}, Keras {keras.__version__}"
    )
    print(f"load before: {load_average()}")
    peak = sgemm_gflops()
    print(f"numpy float32 matmul (4096^3): {peak:.0f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for key in models:
            size = MODELS[key][1]
            print(f"{key} @ {size}: exporting", flush=True)
            all_runners, macs = build_runners(
                key, workdir, args.threads, args.int8, runtime_batches
            )
            print(f"  {macs / 1e9:.2f} G multiply-adds per image (ONNX Conv + MatMul)")
            for batch in batch_sizes:
                steps = args.steps or (10 if batch == 1 else 2)
                images = (
                    np.random.default_rng(0)
                    .uniform(0, 255, (batch, size, size, 3))
                    .astype(np.float32)
                )
                print(
                    f"{key} @ {size}, batch {batch}: {args.rounds} x {steps} calls per runtime",
                    flush=True,
                )
                peers = timm_peers(key, batch, args.threads, layouts)
                runners = {**runners_for_batch(all_runners, batch), **peers}
                try:
                    times = measure(runners, images, steps, args.rounds)
                finally:
                    for peer in peers.values():
                        peer.close()
                base = batch / np.median(times[BASELINE])
                for name, values in times.items():
                    ms = np.percentile(np.asarray(values) * 1000, [50, 90, 99])
                    ips = batch / np.median(values)
                    name = name.replace(" [whole batch]", "") if batch == 1 else name
                    rows.append(
                        (f"{key} @ {size}", batch, name, *ms, ips, 2 * macs * ips / 1e9, ips / base)
                    )
            del all_runners
    print(f"load after: {load_average()}")
    print(
        "\n| model | batch | runtime | p50 ms | p90 ms | p99 ms | img/s | GFLOP/s "
        "| vs keras.applications |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for model_name, batch, name, p50, p90, p99, ips, gflops, ratio in rows:
        print(
            f"| {model_name} | {batch} | {name} | {p50:.1f} | {p90:.1f} | {p99:.1f} | "
            f"{ips:.1f} | {gflops:.0f} | {ratio:.2f}x |"
        )
    print(f"\nnumpy float32 matmul on this machine: {peak:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
