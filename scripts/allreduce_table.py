"""Gradient all-reduce traffic per training step for each EfficientNet config.

    python scripts/allreduce_table.py                          # every shipped config, markdown
    python scripts/allreduce_table.py --replicas 8,32 --format json config/efficientnet_v2/s_cfg.py

One step all-reduces one gradient per trainable parameter (BatchNorm moving statistics are not
trained, so they are not reduced): float32 = 4 bytes per parameter, 2 with the float16
compression of runtime.distribute. A ring all-reduce over N replicas sends (and receives)
2 (N - 1) / N times the gradient bytes per replica: N - 1 reduce-scatter steps plus N - 1
all-gather steps, each moving 1/N of the buffer. NCCL's tree / hierarchical algorithms move
the same volume per GPU; only latency differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config.loader import ConfigError, load_config  # noqa: E402

MB = 1e6


def ring_bytes_per_replica(gradient_bytes: float, replicas: int) -> float:
    """Bytes each replica sends in one ring all-reduce of `gradient_bytes` over `replicas`."""
    return 2 * (replicas - 1) / replicas * gradient_bytes


def traffic_row(cfg_path: str, replicas: list[int]) -> dict:
    """Trainable parameters of one config's model and its all-reduce bytes per step.

    Args:
      cfg_path: path of a `*_cfg.py` module (1000 classes, as configured).
      replicas: replica counts to report ring traffic for.

    Returns:
      A dict: model, trainable_params, grad_mb_fp32, grad_mb_fp16, and per replica count N
      ring_mb_fp32_N / ring_mb_fp16_N (MB sent per replica per step).
    """
    config = load_config(cfg_path)
    # TensorFlow loads here, not at import: bad arguments fail at once.
    import keras

    from model import build_model

    model = build_model(config)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    keras.backend.clear_session()
    row = {
        "model": config["name"],
        "trainable_params": trainable,
        "grad_mb_fp32": trainable * 4 / MB,
        "grad_mb_fp16": trainable * 2 / MB,
    }
    for n in replicas:
        row[f"ring_mb_fp32_{n}"] = ring_bytes_per_replica(trainable * 4, n) / MB
        row[f"ring_mb_fp16_{n}"] = ring_bytes_per_replica(trainable * 2, n) / MB
    return row


def markdown(rows: list[dict], replicas: list[int]) -> str:
    """The rows as a README table (MB = 10^6 bytes)."""
    head = ["model", "trainable params", "gradient MB fp32", "gradient MB fp16"]
    for n in replicas:
        head += [f"sent/replica MB, N={n} fp32", f"N={n} fp16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["model"],
            f"{r['trainable_params']:,}",
            f"{r['grad_mb_fp32']:.1f}",
            f"{r['grad_mb_fp16']:.1f}",
        ]
        for n in replicas:
            cells += [f"{r[f'ring_mb_fp32_{n}']:.1f}", f"{r[f'ring_mb_fp16_{n}']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="config modules (default: all shipped ones)")
    parser.add_argument(
        "--replicas",
        default="8,32",
        help="comma-separated replica counts N (default 8,32: one 8-GPU node, 4 nodes)",
    )
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    try:
        replicas = [int(n) for n in args.replicas.split(",")]
    except ValueError:
        parser.error(f"--replicas must be comma-separated integers, got {args.replicas!r}")
    if any(n < 1 for n in replicas):
        parser.error(f"--replicas must be >= 1, got {args.replicas!r}")
    logging.basicConfig(level=logging.WARNING)
    from scripts.model_table import default_configs

    try:
        rows = [traffic_row(path, replicas) for path in (args.configs or default_configs())]
    except ConfigError as err:
        parser.error(str(err))
    print(json.dumps(rows, indent=1) if args.format == "json" else markdown(rows, replicas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
