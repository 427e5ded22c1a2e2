"""EfficientNet benchmark tables: training img/s per model on 1..N devices, weak scaling, ETA.

    python scripts/benchmark_table.py --models b0,b4 --devices 1,2,4,8 --precision fp32,amp \\
        --batch auto --synthetic --out_dir bench_tables
    python scripts/benchmark_table.py --models b0,s --devices 1,2 --batch 4 --synthetic \\
        --mparams width_coefficient=0.1,depth_coefficient=0.1,train_img_size=32,eval_img_size=32 \\
        --steps 3 --warmup_steps 1 --out_dir /tmp/t -- --no-use_xla      # CPU, logical devices

A thin driver over `main.py --mode training_benchmark` (or `inference_benchmark` with
`--benchmark inference`): every (model, precision, devices) point runs in a fresh `python main.py`
process, so accelerator memory and XLA caches do not leak between points, with its own model_dir
under --out_dir; its model_dir/benchmark_*.json is read back. A point that fails (out of memory
at its batch, a crash, a timeout) is reported as failed, with the reason, and the sweep goes on.

Devices = replicas of one process's MirroredStrategy: `--num_gpus N` on GPU machines;
without GPUs, N logical CPU devices (`--num_gpus 0 --cpu_replicas N`), so the tables can be
made (and tested) on CPU. `--batch auto` = the per-GPU batches of the published tables (B0 256,
B1 192, B2 128, B3 64, B4 32, B5 16, B6 12, B7 8, fitting a 32 GB V100), scaled down in
proportion on smaller memory. Tables (markdown on stdout, everything in benchmark_table.json):
throughput (img/s), weak scaling = img/s(N) / (N x img/s(1)), ETA = hours per ImageNet epoch
(1,281,167 / img/s / 3600), and the scaling model (`scripts/scaling_model.py`) at 8..128 GPUs
from the 1-device step time. Params and GFLOPs come from `scripts/model_table.py`.
Arguments after `--` go to every main.py call unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts import scaling_model  # noqa: E402
from utils.fileio import atomic_write_text  # noqa: E402

logger = logging.getLogger("benchmark_table")

IMAGENET_TRAIN_IMAGES = 1_281_167
MODEL_CONFIGS = {
    **{f"b{i}": f"config/efficientnet_v1/b{i}_cfg.py" for i in range(8)},
    **{v: f"config/efficientnet_v2/{v}_cfg.py" for v in ("s", "m", "l", "xl")},
}
# Per-GPU training batches of the torchskeleton/NVIDIA tables on a 32 GB V100 (B0 256, B4 32:
# NVIDIA's FP32 V100-32G recipes). NOTE: the v2 values are ours (no published table).
AUTO_BATCH = {
    "b0": 256,
    "b1": 192,
    "b2": 128,
    "b3": 64,
    "b4": 32,
    "b5": 16,
    "b6": 12,
    "b7": 8,
    "s": 128,
    "m": 64,
    "l": 32,
    "xl": 16,
}
AUTO_BATCH_MEMORY_GB = 32.0
PRECISION_FLAGS = {
    "fp32": ["--no-use_amp", "--no-use_tf32"],
    "tf32": ["--no-use_amp", "--use_tf32"],
    "amp": ["--use_amp"],
}
RESULT_FILES = {"training": "benchmark_training.json", "inference": "benchmark_inference.json"}
OUTPUT_FILE = "benchmark_table.json"


def _list(kind, choices=None):
    def parse(text: str):
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None
        bad = [
            v
            for v in values
            if (choices is not None and v not in choices) or (kind is int and v < 1)
        ]
        if not values or bad:
            allowed = f" (choices: {', '.join(choices)})" if choices else " (integers >= 1)"
            raise argparse.ArgumentTypeError(f"bad value(s) {bad or text!r}{allowed}")
        return values

    return parse


def _batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batch must be 'auto' or an integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        type=_list(str, tuple(MODEL_CONFIGS)),
        default=["b0"],
        help="comma-separated: b0..b7, s, m, l, xl (default b0)",
    )
    parser.add_argument(
        "--devices",
        type=_list(int),
        default=[1],
        help="replica counts, e.g. 1,2,4,8 (default 1); the smallest is the weak-scaling base",
    )
    parser.add_argument(
        "--precision",
        type=_list(str, tuple(PRECISION_FLAGS)),
        default=["fp32"],
        help="fp32 (TF32 off), tf32, amp; comma-separated (default fp32)",
    )
    parser.add_argument(
        "--batch",
        type=_batch,
        default="auto",
        help="per-device batch, or 'auto' (published batch per model, scaled to device memory)",
    )
    parser.add_argument("--benchmark", choices=tuple(RESULT_FILES), default="training")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--synthetic", action="store_true", help="synthetic data (the model only)")
    data.add_argument("--data_dir", help="real data: ImageNet TFRecords (input pipeline included)")
    parser.add_argument("--mparams", default=None, help="model overrides for every model (k=v,...)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per point")
    parser.add_argument("--warmup_steps", type=int, default=10, help="untimed steps per point")
    parser.add_argument(
        "--device_kind",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="auto: GPUs when nvidia-smi lists any",
    )
    parser.add_argument(
        "--point_timeout",
        type=float,
        default=3600.0,
        help="seconds before a point is stopped and reported as failed",
    )
    parser.add_argument(
        "--out_dir",
        required=True,
        help="one model_dir per point and benchmark_table.json (must not exist or be empty)",
    )
    scaling_model.add_interconnect_args(parser)
    args = parser.parse_args(own)
    error = scaling_model.check_inputs(
        args.intra_bandwidth, args.inter_bandwidth, args.gpus_per_node, args.overlap
    )
    if args.steps < 1 or args.warmup_steps < 0:
        error = (
            f"--steps must be >= 1 and --warmup_steps >= 0, got {args.steps}, {args.warmup_steps}"
        )
    if os.path.isdir(args.out_dir) and os.listdir(args.out_dir):
        error = f"--out_dir {args.out_dir} is not empty; pick a new folder (nothing is overwritten)"
    elif os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        error = f"--out_dir {args.out_dir} is a file; pick a folder"
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        error = f"--data_dir {args.data_dir} is not a folder"
    if error:
        parser.error(error)
    return args, passthrough


def gpu_memory_gb() -> list[float]:
    """Total memory of each visible GPU (GB) from nvidia-smi; [] without GPUs."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [float(v) / 1024 for v in out.split() if v.strip()]


def host_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def auto_batch(model: str, memory_gb: float) -> int:
    """The published per-GPU batch of `model`, scaled down in proportion below 32 GB."""
    scale = min(1.0, memory_gb / AUTO_BATCH_MEMORY_GB)
    return max(1, int(AUTO_BATCH[model] * scale))


def main_args(
    model: str,
    precision: str,
    devices: int,
    batch: int,
    use_gpu: bool,
    args: argparse.Namespace,
    point_dir: str,
    passthrough: list[str],
) -> list[str]:
    """The main.py command line of one point."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        "--cfg",
        MODEL_CONFIGS[model],
        "--mode",
        f"{args.benchmark}_benchmark",
        "--model_dir",
        point_dir,
        "--benchmark_batch_sizes",
        str(batch),
        "--train_batch_size",
        str(batch),
        "--eval_batch_size",
        str(batch),
        "--benchmark_steps",
        str(args.steps),
        "--benchmark_warmup_steps",
        str(args.warmup_steps),
        *PRECISION_FLAGS[precision],
    ]
    cmd += (
        ["--num_gpus", str(devices)]
        if use_gpu
        else ["--num_gpus", "0", "--cpu_replicas", str(devices)]
    )
    cmd += (
        ["--dataset", "synthetic"]
        if args.synthetic
        else ["--dataset", "imagenet", "--data_dir", args.data_dir]
    )
    if args.mparams:
        cmd += ["--mparams", args.mparams]
    return cmd + passthrough


def _failure_reason(stderr: str, returncode: int) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "out of memory" in line.lower():
            return line[:300]
    return (lines[-1][:300] if lines else "") or f"exit status {returncode}"


def run_point(cmd: list[str], point_dir: str, result_file: str, timeout: float) -> dict:
    """Run one main.py point; returns its benchmark row plus header fields, or {"error": ...}."""
    os.makedirs(point_dir)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    with open(os.path.join(point_dir, "main_output.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    path = os.path.join(point_dir, result_file)
    if proc.returncode != 0 or not os.path.exists(path):
        return {"error": _failure_reason(proc.stderr, proc.returncode)}
    with open(path) as f:
        document = json.load(f)
    row = document["results"][0]
    if "error" in row:
        return {"error": row["error"]}
    header = {k: document[k] for k in ("image_size", "precision", "num_replicas", "device")}
    return {**header, **row, "wall_s": time.perf_counter() - start}


def model_info(model: str, mparams: str | None) -> dict:
    """Params, GFLOPs and trainable params from scripts/model_table.py (GPUs hidden here)."""
    from scripts.model_table import model_row

    row = model_row(MODEL_CONFIGS[model], mparams)
    return {k: row[k] for k in ("params", "trainable_params", "gflops", "resolution")}


def eta_hours(images_per_sec: float) -> float:
    """Hours per ImageNet-1k training epoch at `images_per_sec`."""
    return IMAGENET_TRAIN_IMAGES / images_per_sec / 3600


def _ok(point: dict | None) -> bool:
    return point is not None and "error" not in point


def add_derived(points: list[dict]) -> None:
    """Weak scaling (vs the fewest devices of the same model/precision) and ETA, in place."""
    for p in points:
        if not _ok(p["result"]):
            continue
        base = min(
            (
                q
                for q in points
                if q["model"] == p["model"]
                and q["precision"] == p["precision"]
                and _ok(q["result"])
            ),
            key=lambda q: q["devices"],
        )
        per_device = base["result"]["images_per_sec"] / base["devices"]
        p["weak_scaling"] = p["result"]["images_per_sec"] / (p["devices"] * per_device)
        p["eta_h_per_epoch"] = eta_hours(p["result"]["images_per_sec"])


def predictions(points: list[dict], infos: dict, args: argparse.Namespace) -> list[dict]:
    """Scaling-model rows per model/precision, from the 1-device point."""
    out = []
    for p in points:
        if p["devices"] != 1 or not _ok(p["result"]) or args.benchmark != "training":
            continue
        step_s = p["result"]["step_time_mean_ms"] / 1e3
        grad_bytes = infos[p["model"]]["trainable_params"] * args.grad_bytes_per_param
        gpus = sorted({n for n in args.devices if n > 1} | set(args.predict_gpus))
        rows = scaling_model.predict(
            step_s,
            p["batch"],
            grad_bytes,
            gpus,
            args.intra_bandwidth,
            args.inter_bandwidth,
            args.gpus_per_node,
            args.overlap,
        )
        out.append(
            {
                "model": p["model"],
                "precision": p["precision"],
                "batch": p["batch"],
                "gradient_mb": grad_bytes / 1e6,
                "rows": rows,
            }
        )
    return out


def _cell(point: dict | None, key: str, fmt: str) -> str:
    if point is None:
        return ""
    if not _ok(point["result"]):
        return "failed"
    value = point["result"].get(key, point.get(key))
    return format(value, fmt) if value is not None else ""


def tables(points: list[dict], infos: dict, preds: list[dict], devices: list[int]) -> str:
    """The markdown tables: throughput, weak scaling, ETA, scaling model."""
    keys = sorted(
        {(p["model"], p["precision"], p["batch"]) for p in points},
        key=lambda k: (list(MODEL_CONFIGS).index(k[0]), k[1]),
    )
    index = {(p["model"], p["precision"], p["devices"]): p for p in points}
    head = "| model | params (M) | GFLOPs | precision | batch/device |"
    sections = []
    for title, key, fmt in (
        ("Throughput (images/s)", "images_per_sec", ".1f"),
        ("Weak scaling = img/s(N) / (N x img/s(base))", "weak_scaling", ".3f"),
        ("ETA (hours per ImageNet epoch = 1,281,167 / img/s / 3600)", "eta_h_per_epoch", ".2f"),
    ):
        lines = [
            f"### {title}",
            "",
            head + "".join(f" {n} dev |" for n in devices),
            "|---|---|---|---|---|" + "---|" * len(devices),
        ]
        for model, precision, batch in keys:
            info = infos.get(model, {})
            cells = [_cell(index.get((model, precision, n)), key, fmt) for n in devices]
            lines.append(
                f"| {model} | {info.get('params', 0) / 1e6:.2f} | {info.get('gflops', 0):.3f} "
                f"| {precision} | {batch} | " + " | ".join(cells) + " |"
            )
        sections.append("\n".join(lines))
    if preds:
        gpus = [r["gpus"] for r in preds[0]["rows"]]
        lines = [
            "### Scaling model: predicted img/s (weak scaling) from the 1-device step, "
            "measured where run",
            "",
            "| model | precision | batch | gradient MB | measured 1 dev |"
            + "".join(f" {n} dev |" for n in gpus),
            "|---|---|---|---|---|" + "---|" * len(gpus),
        ]
        for pred in preds:
            one = index[(pred["model"], pred["precision"], 1)]["result"]["images_per_sec"]
            cells = []
            for r in pred["rows"]:
                cell = f"{r['images_per_sec']:.1f} ({r['weak_scaling']:.3f})"
                measured = index.get((pred["model"], pred["precision"], r["gpus"]))
                if measured is not None and _ok(measured["result"]):
                    cell += (
                        f"; measured {measured['result']['images_per_sec']:.1f} "
                        f"({measured['weak_scaling']:.3f})"
                    )
                cells.append(cell)
            lines.append(
                f"| {pred['model']} | {pred['precision']} | {pred['batch']} | "
                f"{pred['gradient_mb']:.1f} | {one:.1f} | " + " | ".join(cells) + " |"
            )
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    args, passthrough = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    memories = gpu_memory_gb()
    use_gpu = args.device_kind == "gpu" or (args.device_kind == "auto" and bool(memories))
    memory = min(memories) if use_gpu and memories else host_memory_gb()
    os.makedirs(args.out_dir, exist_ok=True)
    # Profiling builds models in this process: keep it off the GPUs the points use.
    child_env_gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    infos = {}
    for model in args.models:
        logger.info("profiling %s", model)
        infos[model] = model_info(model, args.mparams)
    if child_env_gpus is None:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = child_env_gpus

    plan = [(m, pr, n) for m in args.models for pr in args.precision for n in sorted(args.devices)]
    points, failed = [], 0
    for i, (model, precision, devices) in enumerate(plan, start=1):
        batch = auto_batch(model, memory) if args.batch == "auto" else args.batch
        point_dir = os.path.join(args.out_dir, f"{model}_{precision}_{devices}dev")
        cmd = main_args(model, precision, devices, batch, use_gpu, args, point_dir, passthrough)
        logger.info(
            "[%d/%d] %s %s, %d device(s), batch %d/device",
            i,
            len(plan),
            model,
            precision,
            devices,
            batch,
        )
        result = run_point(cmd, point_dir, RESULT_FILES[args.benchmark], args.point_timeout)
        if "error" in result:
            failed += 1
            logger.warning(
                "[%d/%d] %s %s on %d device(s) failed: %s; continuing with the next point",
                i,
                len(plan),
                model,
                precision,
                devices,
                result["error"],
            )
        else:
            logger.info("[%d/%d] %.1f img/s", i, len(plan), result["images_per_sec"])
        points.append(
            {
                "model": model,
                "precision": precision,
                "devices": devices,
                "batch": batch,
                "command": cmd,
                "result": result,
            }
        )
    add_derived(points)
    preds = predictions(points, infos, args)
    document = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python scripts/benchmark_table.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "benchmark": args.benchmark,
        "device_kind": "gpu" if use_gpu else "cpu",
        "models": infos,
        "points": points,
        "scaling_model": {
            "intra_bandwidth_gbps": args.intra_bandwidth,
            "inter_bandwidth_gbps": args.inter_bandwidth,
            "gpus_per_node": args.gpus_per_node,
            "overlap": args.overlap,
            "grad_bytes_per_param": args.grad_bytes_per_param,
            "predictions": preds,
        },
    }
    path = os.path.join(args.out_dir, OUTPUT_FILE)
    atomic_write_text(path, json.dumps(document, indent=1))
    print(tables(points, infos, preds, sorted(args.devices)))
    if preds:
        print(
            f"\nscaling model: ring all-reduce 2(N-1)/N x gradient bytes / bandwidth; "
            f"{args.intra_bandwidth:g} GB/s within {args.gpus_per_node} GPUs, "
            f"{args.inter_bandwidth:g} GB/s across nodes, overlap {args.overlap:g} of the step"
        )
    print(
        f"\n{len(plan) - failed}/{len(plan)} points measured"
        + (f", {failed} failed (see the 'failed' cells and the point logs)" if failed else "")
        + f"; results written to {path}"
    )
    return 1 if failed == len(plan) else 0


if __name__ == "__main__":
    sys.exit(main())
