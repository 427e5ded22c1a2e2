"""Predict data-parallel training throughput at 8..128 GPUs from one GPU's step time.

    python scripts/scaling_model.py --params 5288548 --batch 256 --images_per_sec 468.5
    python scripts/scaling_model.py --params 5288548 --batch 256 --images_per_sec 468.5 \\
        --inter_bandwidth 25 --overlap 0.5 --gpus 8,16,32,64,128 --format json

Weak scaling (fixed per-GPU batch): every replica computes the same step as one GPU alone
(time t1, measured), then all replicas all-reduce one gradient per trainable parameter. A ring
all-reduce over N replicas sends 2 (N - 1) / N x the gradient bytes per replica
(`scripts/allreduce_table.py`), so it takes

    t_allreduce(N) = 2 (N - 1) / N x bytes / bandwidth(N)

where bandwidth(N) is the per-GPU bus bandwidth of the slowest link in the ring: the intra-node
bandwidth (NVLink) while N <= gpus_per_node, else the inter-node bandwidth per GPU
(InfiniBand). Overlap: a fraction `overlap` of t1 (at most the backward pass, about 2/3 of a
step) runs concurrently with the all-reduce, so the step takes

    t_step(N) = t1 + max(0, t_allreduce(N) - overlap x t1)

img/s(N) = N x batch / t_step(N); weak scaling = img/s(N) / (N x img/s(1)) = t1 / t_step(N).
The default overlap is 0 (pessimistic: Keras' `apply_gradients` all-reduces after the whole
backward pass). The model has bandwidth only: no latency term, no stragglers, no input
pipeline; docs/benchmarks.md compares it with published 8..128-GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.allreduce_table import ring_bytes_per_replica  # noqa: E402

GB = 1e9
DEFAULT_GPUS = (8, 16, 32, 64, 128)
# NOTE: typical NCCL bus bandwidths per GPU, GB/s: DGX-1V NVLink ~130, DGX-A100 NVSwitch ~230;
# one 100 Gb/s EDR InfiniBand port per GPU pair ~6, DGX-A100's 8x 200 Gb/s HDR ~25 per GPU.
DEFAULT_INTRA_GBPS = 130.0
DEFAULT_INTER_GBPS = 12.5
DEFAULT_GPUS_PER_NODE = 8


def allreduce_seconds(
    gradient_bytes: float, replicas: int, intra_gbps: float, inter_gbps: float, gpus_per_node: int
) -> float:
    """Seconds of one ring all-reduce of `gradient_bytes` over `replicas` GPUs (0 for one)."""
    if replicas <= 1:
        return 0.0
    bandwidth = intra_gbps if replicas <= gpus_per_node else inter_gbps
    return ring_bytes_per_replica(gradient_bytes, replicas) / (bandwidth * GB)


def predict(
    step_time_s: float,
    batch: int,
    gradient_bytes: float,
    gpus: list[int] | tuple[int, ...],
    intra_gbps: float = DEFAULT_INTRA_GBPS,
    inter_gbps: float = DEFAULT_INTER_GBPS,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    overlap: float = 0.0,
) -> list[dict]:
    """Predicted throughput and weak scaling at each GPU count.

    Args:
      step_time_s: measured 1-GPU training step time (seconds) at `batch`.
      batch: per-GPU batch.
      gradient_bytes: bytes all-reduced per step (trainable params x 4, x 2 with fp16 compression).
      gpus: GPU counts to predict.
      intra_gbps: per-GPU bus bandwidth inside a node, GB/s (10^9 bytes).
      inter_gbps: per-GPU bus bandwidth across nodes, GB/s.
      gpus_per_node: GPUs sharing the intra-node links.
      overlap: fraction of the 1-GPU step that hides all-reduce time (0..1).

    Returns:
      One dict per GPU count: gpus, allreduce_ms, step_ms, images_per_sec, weak_scaling.
    """
    rows = []
    for n in gpus:
        t_ar = allreduce_seconds(gradient_bytes, n, intra_gbps, inter_gbps, gpus_per_node)
        t_step = step_time_s + max(0.0, t_ar - overlap * step_time_s)
        rows.append(
            {
                "gpus": n,
                "allreduce_ms": t_ar * 1e3,
                "step_ms": t_step * 1e3,
                "images_per_sec": n * batch / t_step,
                "weak_scaling": step_time_s / t_step,
            }
        )
    return rows


def check_inputs(
    intra_gbps: float, inter_gbps: float, gpus_per_node: int, overlap: float
) -> str | None:
    """A one-line error for an impossible interconnect description, else None."""
    if not (intra_gbps > 0 and inter_gbps > 0):
        return f"bandwidths must be > 0 GB/s, got intra {intra_gbps}, inter {inter_gbps}"
    if gpus_per_node < 1:
        return f"--gpus_per_node must be >= 1, got {gpus_per_node}"
    if not 0.0 <= overlap <= 1.0:
        return f"--overlap must be in [0, 1], got {overlap}"
    return None


def markdown(rows: list[dict]) -> str:
    """Predicted rows as a markdown table."""
    lines = ["| GPUs | all-reduce ms | step ms | img/s | weak scaling |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['gpus']} | {r['allreduce_ms']:.2f} | {r['step_ms']:.1f} | "
        f"{r['images_per_sec']:.1f} | {r['weak_scaling']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"GPU counts must be >= 1, got {text!r}")
    return values


def add_interconnect_args(parser: argparse.ArgumentParser) -> None:
    """The interconnect flags shared with scripts/benchmark_table.py."""
    g = parser.add_argument_group("scaling model (interconnect)")
    g.add_argument(
        "--predict_gpus",
        type=_int_list,
        default=list(DEFAULT_GPUS),
        help="GPU counts to predict (default 8,16,32,64,128)",
    )
    g.add_argument(
        "--intra_bandwidth",
        type=float,
        default=DEFAULT_INTRA_GBPS,
        help="per-GPU all-reduce bus bandwidth inside a node, GB/s (default %(default)s)",
    )
    g.add_argument(
        "--inter_bandwidth",
        type=float,
        default=DEFAULT_INTER_GBPS,
        help="per-GPU all-reduce bus bandwidth across nodes, GB/s (default %(default)s)",
    )
    g.add_argument("--gpus_per_node", type=int, default=DEFAULT_GPUS_PER_NODE)
    g.add_argument(
        "--overlap",
        type=float,
        default=0.0,
        help="fraction of the 1-GPU step that hides all-reduce time, 0..1 (default 0)",
    )
    g.add_argument(
        "--grad_bytes_per_param",
        type=int,
        default=4,
        choices=(2, 4),
        help="4 = float32 gradients, 2 = --fp16_compression",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, required=True, help="trainable parameters")
    parser.add_argument("--batch", type=int, required=True, help="per-GPU batch")
    parser.add_argument(
        "--images_per_sec",
        type=float,
        required=True,
        help="measured 1-GPU training img/s at --batch",
    )
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    add_interconnect_args(parser)
    args = parser.parse_args(argv)
    error = check_inputs(
        args.intra_bandwidth, args.inter_bandwidth, args.gpus_per_node, args.overlap
    )
    if error is None and not (args.params > 0 and args.batch > 0 and args.images_per_sec > 0):
        error = "--params, --batch and --images_per_sec must be > 0"
    if error:
        parser.error(error)
    rows = predict(
        args.batch / args.images_per_sec,
        args.batch,
        args.params * args.grad_bytes_per_param,
        args.predict_gpus,
        args.intra_bandwidth,
        args.inter_bandwidth,
        args.gpus_per_node,
        args.overlap,
    )
    print(json.dumps(rows, indent=1) if args.format == "json" else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
