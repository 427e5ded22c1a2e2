"""Training and inference speed of what users run, side by side in one run, and peak memory.

    python scripts/bench_model.py                        # B0 @224, batch 32, float32
    python scripts/bench_model.py --cfg config/efficientnet_v2/s_cfg.py \
        --reference EfficientNetV2S --image_size 300
    python scripts/bench_model.py --rss                   # also peak RSS, one process per variant

Variants (train: one optimizer update on one synthetic batch; infer: one forward pass):
- `runtime`: our runtime's training step, built exactly as `--mode training_benchmark` builds it
  (`runtime.train.build_run` + `runtime.step.make_train_step`: RMSProp with the LR schedule,
  L2 penalty, label smoothing, metrics) on `--dataset synthetic`. Train only (inference is
  `eval`).
- `ours`: our model in a bare `tf.function` step: forward, softmax cross-entropy, gradients,
  `optimizer.apply` (RMSProp, no L2, no smoothing).
- `ours_keras_bn`: the same with Keras' own BatchNormalization instead of the fused kernel
  (`model.blocks.FusedBatchNormalization` falls back to it).
- `keras.applications`: the reference constructor in the same bare step.
- `timm`: `timm.create_model(--timm_model)` on PyTorch CPU in channels_last memory format (the
  fast one on CPU), when torch and timm are installed; `timm_nchw` (not run unless named in
  `--variants`) the same in NCHW. PyTorch runs in its own process (scripts/torch_peer.py),
  never next to TensorFlow; it times its own calls.

Timing rounds alternate between the variants so that load from other processes hits all alike;
each round times `--steps` calls after `--warmup` untimed ones (tracing). The report prints the
median images/s over rounds, every round's value and the ratio to keras.applications. Peak RSS
(`--rss`) comes from a fresh process per variant (peak after warm-up and timing), since
memory freed by one model stays with the process (Linux VmHWM, which a child does not
inherit from its parent, unlike ru_maxrss). This prints measurements; it asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from scripts.torch_peer import PeerError, TorchPeer, peak_rss_gb  # noqa: E402

logger = logging.getLogger("bench_model")

VARIANTS = ("runtime", "ours", "ours_keras_bn", "keras.applications", "timm", "timm_nchw")
DEFAULT_VARIANTS = VARIANTS[:-1]
TIMM_LAYOUTS = {"timm": "channels_last", "timm_nchw": "nchw"}
REFERENCE = "keras.applications"


def _synthetic(batch: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    return x, keras.utils.to_categorical(rng.integers(0, classes, batch), classes)


def _keras_variant(model: keras.Model, x: np.ndarray, y: np.ndarray, train: bool) -> Callable:
    """A synchronous bare train step or forward pass of a Keras model (TensorFlow backend)."""
    import tensorflow as tf

    from runtime.benchmark import bare_train_step

    x, y = tf.constant(x), tf.constant(y)
    if not train:
        forward = tf.function(lambda images: model(images, training=False))
        return lambda: forward(x).numpy()
    optimizer = keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3)
    optimizer.build(model.trainable_variables)
    step = bare_train_step(model, optimizer)
    return lambda: step(x, y).numpy()


def _runtime_variant(args: argparse.Namespace, model_dir: str) -> Callable:
    """Our runtime's training step, built as `--mode training_benchmark` builds it."""
    from runtime import train
    from runtime.step import TrainMetrics, make_train_step
    from scripts.bench_step import synthetic_training_run

    run = synthetic_training_run(
        args.cfg, args.mparams, args.batch_size, args.image_size, model_dir
    )
    iterator = iter(train.train_dataset(run, run.stages[-1]))
    step = make_train_step(
        run.model,
        run.optimizer,
        dist=run.dist,
        config=run.step_config,
        metrics=TrainMetrics(),
        ema=run.ema,
    )

    def one_step():
        step(next(iterator))
        run.optimizer.iterations.numpy()  # waits for the step to finish

    return one_step


def _timm_variant(args: argparse.Namespace, name: str, classes: int, train: bool):
    """The timm peer (scripts/torch_peer.py) of variant `name`, or None without torch / timm."""
    if not (importlib.util.find_spec("torch") and importlib.util.find_spec("timm")):
        return None
    try:
        return TorchPeer(
            args.timm_model,
            args.batch_size,
            args.image_size,
            phase="train" if train else "infer",
            layout=TIMM_LAYOUTS[name],
            num_classes=classes,
        )
    except PeerError as err:
        logger.warning("%s: not run: %s", name, err)
        return None


def build_variant(
    name: str, args: argparse.Namespace, train: bool, model_dir: str
) -> Callable | None:
    """The zero-argument synchronous call that one timed step of variant `name` makes."""
    from config.loader import load_config
    from model import build_model
    from model.blocks import FusedBatchNormalization

    config = load_config(args.cfg, args.mparams)
    classes = config["num_classes"]
    if name == "runtime":
        return _runtime_variant(args, model_dir) if train else None
    if name in TIMM_LAYOUTS:
        return _timm_variant(args, name, classes, train)
    x, y = _synthetic(args.batch_size, args.image_size, classes)
    if name == REFERENCE:
        model = getattr(keras.applications, args.reference)(
            weights=None,
            input_shape=(args.image_size, args.image_size, 3),
            classes=classes,
            classifier_activation=None,
        )
    else:
        FusedBatchNormalization.fused_default = name != "ours_keras_bn"
        try:
            model = build_model(config)
        finally:
            FusedBatchNormalization.fused_default = True
    return _keras_variant(model, x, y, train)


def time_rounds(
    steps: dict[str, Callable], warmup: int, rounds: int, n: int, batch: int
) -> dict[str, list[float]]:
    """Images/s of each variant per round, rounds alternating between variants (a TorchPeer
    times its calls in its own process)."""
    for name, fn in steps.items():
        logger.info("warming up %s (%d steps)", name, warmup)
        if isinstance(fn, TorchPeer):
            fn.warmup(warmup)
            continue
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, fn in steps.items():
            if isinstance(fn, TorchPeer):
                rates[name].append(n * batch / sum(fn.time_calls(n)))
                continue
            start = time.perf_counter()
            for _ in range(n):
                fn()
            rates[name].append(n * batch / (time.perf_counter() - start))
        logger.info(
            "round %d/%d: %s",
            r + 1,
            rounds,
            ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()),
        )
    return rates


def format_table(title: str, rates: dict[str, list[float]], rss: dict[str, float]) -> str:
    """The markdown table of one phase: median img/s, ratio to keras.applications, rounds."""
    median = {name: statistics.median(v) for name, v in rates.items()}
    base = median.get(REFERENCE)
    lines = [
        f"### {title}",
        "",
        "| variant | median img/s | vs keras.applications | peak RSS GB | rounds (img/s) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, values in rates.items():
        ratio = f"{median[name] / base:.3f}" if base else "-"
        memory = f"{rss[name]:.2f}" if name in rss else "-"
        lines.append(
            f"| {name} | {median[name]:.2f} | {ratio} | {memory} | "
            f"{' '.join(f'{v:.2f}' for v in values)} |"
        )
    return "\n".join(lines)


def measure_rss(args: argparse.Namespace, name: str, phase: str) -> float | None:
    """Peak RSS (GB) of one variant's warm-up + timing in a fresh process; None if it failed."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--cfg",
        args.cfg,
        *(["--mparams", args.mparams] if args.mparams else []),
        "--reference",
        args.reference,
        "--batch_size",
        str(args.batch_size),
        "--image_size",
        str(args.image_size),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--rounds",
        "1",
        "--variants",
        name,
        "--phases",
        phase,
        "--timm_model",
        args.timm_model,
        "--_rss_child",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        logger.warning("peak RSS of %s (%s) not measured: exit %d", name, phase, done.returncode)
        return None
    return json.loads(lines[-1])["peak_rss_gb"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cfg",
        default=os.path.join("config", "efficientnet_v1", "b0_cfg.py"),
        help="our config module (default: %(default)s)",
    )
    parser.add_argument("--mparams", default=None, help="model overrides k=v,... of our config")
    parser.add_argument(
        "--reference",
        default="EfficientNetB0",
        help="keras.applications constructor to compare with (default: %(default)s)",
    )
    parser.add_argument(
        "--timm_model",
        default="efficientnet_b0",
        help="timm model name, used when torch and timm are installed",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (tracing)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated subset of: " + ", ".join(VARIANTS) + " (default: all but timm_nchw)",
    )
    parser.add_argument("--phases", default="train,infer", help="train, infer or both")
    parser.add_argument(
        "--rss",
        action="store_true",
        help="also measure peak RSS per variant, one fresh process each",
    )
    parser.add_argument("--_rss_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args._rss_child else logging.INFO, format="%(message)s"
    )
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [v for v in names if v not in VARIANTS] + [
        p for p in phases if p not in ("train", "infer")
    ]
    if bad or not names or not phases:
        print(
            f"error: unknown variant or phase {', '.join(bad) or '(none given)'}", file=sys.stderr
        )
        return 2
    if not hasattr(keras.applications, args.reference):
        print(f"error: keras.applications has no {args.reference!r}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.cfg):
        print(f"error: no config file {args.cfg}", file=sys.stderr)
        return 2
    if keras.backend.backend() != "tensorflow":
        print(
            "error: this benchmark runs the TensorFlow backend (unset KERAS_BACKEND)",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory() as model_dir:
        tables = []
        for phase in phases:
            steps = {}
            for name in names:
                fn = build_variant(name, args, phase == "train", model_dir)
                if fn is None:
                    logger.info(
                        "%s: not run for %s (%s)",
                        name,
                        phase,
                        "no torch / timm" if name in TIMM_LAYOUTS else "training only",
                    )
                    continue
                steps[name] = fn
            rates = time_rounds(steps, args.warmup, args.rounds, args.steps, args.batch_size)
            peers = {k: v for k, v in steps.items() if isinstance(v, TorchPeer)}
            if args._rss_child:
                peak = next(iter(peers.values())).peak_rss_gb() if peers else peak_rss_gb()
                print(json.dumps({"peak_rss_gb": peak}))
                return 0
            for peer in peers.values():
                peer.close()
            rss = {}
            if args.rss:
                for name in steps:
                    value = measure_rss(args, name, phase)
                    if value is not None:
                        rss[name] = value
            tables.append(
                format_table(
                    f"{phase}: {os.path.basename(args.cfg)} vs {args.reference}, batch "
                    f"{args.batch_size}, {args.image_size}px, float32, {args.rounds} rounds x "
                    f"{args.steps} steps",
                    rates,
                    rss,
                )
            )
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
