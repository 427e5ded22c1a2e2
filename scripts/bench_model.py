"""Training throughput of our EfficientNet vs keras.applications, side by side in one run.

    python scripts/bench_model.py                          # B0, bs 32, 224 px, fp32
    python scripts/bench_model.py --cfg config/efficientnet_v2/s_cfg.py --reference EfficientNetV2S

Both models train on the same synthetic batch with the same optimizer (SGD + momentum) and loss
(softmax cross-entropy on logits), via `Model.train_on_batch` (compiled tf.function; no XLA:
on CPU it is slower). Timing rounds alternate between the two models so that load from other
processes hits both alike; the report gives the median img/s over rounds and ours/reference.
This prints measurements; it asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from config.loader import ConfigError, load_config  # noqa: E402
from model import build_model  # noqa: E402

logger = logging.getLogger("bench_model")


def compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=False)
    return model


def time_steps(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    """Images per second over `steps` train steps (the loss is fetched, so work is finished)."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(loss)
    return steps * len(x) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", default=os.path.join("config", "efficientnet_v1", "b0_cfg.py"),
                        help="our config module (default: %(default)s)")
    parser.add_argument("--reference", default="EfficientNetB0",
                        help="keras.applications constructor to compare with (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model (tracing)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="train steps per model per round")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not hasattr(keras.applications, args.reference):
        print(f"error: keras.applications has no {args.reference!r}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    rng = np.random.default_rng(0)
    size, classes = args.image_size, config["num_classes"]
    x = rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, args.batch_size), classes)
    models = {
        "ours": compiled(build_model(config)),
        "keras.applications": compiled(getattr(keras.applications, args.reference)(
            weights=None, input_shape=(size, size, 3), classes=classes,
            classifier_activation=None)),
    }
    for name, model in models.items():
        logger.info("warming up %s (%d steps)", name, args.warmup)
        time_steps(model, x, y, args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, model in models.items():
            rates[name].append(time_steps(model, x, y, args.steps))
        logger.info("round %d/%d: %s", r + 1, args.rounds,
                    ", ".join(f"{n} {v[-1]:.2f} img/s" for n, v in rates.items()))

    median = {name: statistics.median(v) for name, v in rates.items()}
    print(f"{config['name']} vs keras.applications.{args.reference}: batch {args.batch_size}, "
          f"{size}px, float32, backend {keras.backend.backend()}, "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"{'model':>20}  {'median img/s':>12}  {'rounds':}")
    for name, v in rates.items():
        print(f"{name:>20}  {median[name]:12.2f}  {' '.join(f'{r:.2f}' for r in v)}")
    print(f"{'ratio ours/keras':>20}  {median['ours'] / median['keras.applications']:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
