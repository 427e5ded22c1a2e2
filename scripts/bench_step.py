"""What the runtime's training step costs beyond a bare step, measured side by side in one run.

    python scripts/bench_step.py                  # B0 @224, batch 32, float32, 5 rounds

Every variant is `runtime.step.make_train_step` built from the same `build_run` objects as
`--mode training_benchmark` (RMSProp with the LR schedule, L2 penalty, label smoothing, train
metrics), with one extra removed at a time, next to a bare `tf.function` step (forward,
cross-entropy, gradients, `optimizer.apply`) of the same model and optimizer. All variants take
the same synthetic batch; rounds alternate between them; the table gives median img/s and the
ratio to the bare step. This prints measurements; it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BARE = "bare step (same model and optimizer)"


def synthetic_training_run(
    cfg: str, mparams: str | None, batch_size: int, image_size: int, model_dir: str
):
    """The runtime.train.TrainRun that `--mode training_benchmark` builds for `cfg` on synthetic
    data, XLA off (this script and scripts/bench_model.py time its step against bare steps)."""
    from runtime import flags, train

    params = flags.parse([
        "--cfg", cfg, *(["--mparams", mparams] if mparams else []), "--mode",
        "training_benchmark", "--dataset", "synthetic", "--model_dir", model_dir,
        "--train_batch_size", str(batch_size), "--train_img_size", str(image_size),
        "--no-use_xla", "--log_steps", "1000000"])  # fmt: skip
    return train.build_run(params)


def build_variants(args: argparse.Namespace, model_dir: str) -> dict[str, Callable[[], None]]:
    """Name -> one synchronous training step of that variant."""

    from runtime import benchmark, train
    from runtime.step import StepConfig, TrainMetrics, make_train_step

    run = synthetic_training_run(
        args.cfg, args.mparams, args.batch_size, args.image_size, model_dir
    )
    run.log.close()
    batch = next(iter(train.train_dataset(run, run.stages[-1], announce=False)))
    base = run.step_config
    steps = {}

    def add(name: str, config: StepConfig, metrics: bool = True) -> None:
        step = make_train_step(
            run.model,
            run.optimizer,
            dist=run.dist,
            config=config,
            ema=run.ema,
            metrics=TrainMetrics() if metrics else None,
        )
        steps[name] = lambda: (step(batch), run.optimizer.iterations.numpy())

    add("runtime step (as training runs it)", base)
    add("  without the L2 penalty", dataclasses.replace(base, l2_weight_decay=0.0))
    add("  without label smoothing", dataclasses.replace(base, label_smoothing=0.0))
    add("  without train metrics", base, metrics=False)
    add(
        "  without all three",
        dataclasses.replace(base, l2_weight_decay=0.0, label_smoothing=0.0),
        metrics=False,
    )
    bare = benchmark.bare_train_step(run.model, run.optimizer)
    steps[BARE] = lambda: (bare(*batch), run.optimizer.iterations.numpy())
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", default=os.path.join("config", "efficientnet_v1", "b0_cfg.py"))
    parser.add_argument("--mparams", default=None, help="model overrides k=v,... of the config")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.cfg):
        print(f"error: no config file {args.cfg}", file=sys.stderr)
        return 2
    if min(args.batch_size, args.image_size, args.rounds, args.steps) < 1:
        print(
            "error: --batch_size, --image_size, --rounds and --steps must be >= 1", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory() as model_dir:
        steps = build_variants(args, model_dir)
        for fn in steps.values():  # tracing
            fn()
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, fn in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
    bare = statistics.median(rates[BARE])
    print(
        f"{os.path.basename(args.cfg)}, batch {args.batch_size}, {args.image_size}px, float32, "
        f"{args.rounds} rounds x {args.steps} steps\n"
    )
    print("| step | median img/s | vs bare | rounds (img/s) |\n|---|---:|---:|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} | {median / bare:.3f} | "
            f"{' '.join(f'{v:.2f}' for v in values)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
