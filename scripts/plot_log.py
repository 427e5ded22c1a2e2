"""Plot a DLLogger JSON log: loss, accuracy, learning rate and throughput curves to a PNG.

    python scripts/plot_log.py results/log.json [-o curves.png]

Metrics are recognised by name, so any run of this application (and most DLLogger logs)
plots: `*loss*`, `*top1*` / `*top5*` / `*acc*`, `lr` / `*learning_rate*`, and `*ips*` /
`*images_per_sec*` / `*throughput*`. Progress records `[epoch, step]` give the within-epoch
curves; per-epoch records `[epoch]` (e.g. validation) are drawn at the end of their epoch.
Epochs are 1-based, as runtime/train.py writes them (`[1, 20]` is step 20 of the first epoch).
Epoch summaries of a metric that also has step points are not drawn (they repeat them).
The x-axis is in epochs when steps restart every epoch, in steps when they count globally.
Validation keys name the weights (`val.*` raw, `val_ema.*` EMA; runtime/train_report.py), and so
does the legend.

The title is the run's folder (the log's directory) and model; dashed lines mark where a
progressive-resizing stage starts (`--n_stages`) and where fine-tuning unfreezes every layer
(`--unfreeze_epoch`), read from the log's PARAMETER record. Values are drawn without an axis
offset (a flat loss is not made to look like it moves), and top-5 is left out for 5 classes or
fewer (`class_names.json` next to the log), where it is always 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime.stages import stages_from_params  # noqa: E402
from utils.dllogger import read_log  # noqa: E402
from utils.fileio import atomic_path  # noqa: E402

PANELS = (
    ("loss", lambda k: "loss" in k),
    ("accuracy", lambda k: any(t in k for t in ("top1", "top5", "acc"))),
    ("learning rate", lambda k: k == "lr" or k.endswith(".lr") or "learning_rate" in k),
    # Per-device throughput is total / replicas: drawing both would only repeat the curve.
    (
        "throughput (img/s)",
        lambda k: (
            "per_device" not in k and any(t in k for t in ("ips", "images_per_sec", "throughput"))
        ),
    ),
)


def collect_series(records: list[dict]) -> tuple[dict[str, list[tuple[float, float]]], str]:
    """Turn LOG records into (x, value) series per metric.

    Args:
      records: from `utils.dllogger.read_log`.

    Returns:
      (metric -> sorted points, x-axis label "epoch" or "step").
    """
    series, xlabel, _ = _series_and_epoch_x(records)
    return series, xlabel


def _series_and_epoch_x(records: list[dict]):
    """collect_series' result and the function that maps an epoch end to its x."""
    progress = [
        r
        for r in records
        if r.get("type") == "LOG" and isinstance(r.get("step"), list) and len(r["step"]) >= 2
    ]
    per_epoch = [
        r
        for r in records
        if r.get("type") == "LOG" and isinstance(r.get("step"), list) and len(r["step"]) == 1
    ]
    steps_by_epoch: dict[int, list[int]] = defaultdict(list)
    for r in progress:
        steps_by_epoch[int(r["step"][0])].append(int(r["step"][1]))
    epochs = sorted(steps_by_epoch)
    # Global step counters keep growing across epochs; per-epoch counters restart.
    global_steps = (
        all(
            min(steps_by_epoch[b]) > max(steps_by_epoch[a])
            for a, b in zip(epochs, epochs[1:], strict=False)
        )
        and len(epochs) > 1
    )
    steps_per_epoch = max((max(s) for s in steps_by_epoch.values()), default=1) or 1

    def progress_x(epoch: int, step: int) -> float:
        return float(step) if global_steps else epoch - 1 + step / steps_per_epoch

    def epoch_x(epoch: int) -> float:
        if global_steps:
            return float(max(steps_by_epoch.get(epoch, [0])))
        return float(epoch)

    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in progress:
        x = progress_x(int(r["step"][0]), int(r["step"][1]))
        for key, value in r.get("data", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series[key].append((x, float(value)))
    in_progress = set(series)
    for r in per_epoch:
        x = epoch_x(int(r["step"][0]))
        for key, value in r.get("data", {}).items():
            # An epoch summary of a metric that has step points repeats them more coarsely.
            if key in in_progress:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series[key].append((x, float(value)))
    return (
        {k: sorted(v) for k, v in series.items()},
        ("step" if global_steps else "epoch"),
        epoch_x,
    )


def run_params(records: list[dict]) -> dict:
    """The run's configuration: the last PARAMETER record (a resumed run logs it again)."""
    params = [r.get("data", {}) for r in records if r.get("step") == "PARAMETER"]
    return params[-1] if params else {}


def boundaries(params: dict) -> list[tuple[int, str]]:
    """(epoch, label) of each epoch after which a new stage or fine-tuning phase starts."""
    marks = []
    try:
        if params.get("n_stages", 1) > 1:
            stages = stages_from_params(params)
            marks += [(st.first_epoch, f"stage {st.index + 1}") for st in stages[1:]]
    except (KeyError, TypeError, ValueError):  # a log of another program
        pass
    if isinstance(params.get("unfreeze_epoch"), int):
        marks.append((params["unfreeze_epoch"], "all layers train"))
    return sorted(marks)


def run_title(log_path: str, params: dict) -> str:
    """The run's folder (the log's directory as given) and its model, e.g.
    "runs/my_model: efficientnet-b0"."""
    folder = os.path.dirname(log_path) or os.path.basename(os.getcwd())
    model = params.get("model", {}).get("name") if isinstance(params.get("model"), dict) else None
    return f"{folder}: {model}" if model else folder


def few_classes(log_path: str, limit: int = 5) -> bool:
    """Whether the run has `limit` classes or fewer (class_names.json, written by training, next
    to the log); False when unknown."""
    path = os.path.join(os.path.dirname(log_path), "class_names.json")
    try:
        with open(path, encoding="utf-8") as f:
            return int(json.load(f)["num_classes"]) <= limit
    except (OSError, ValueError, KeyError, TypeError):
        return False


def plot(
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    title: str,
    out_path: str,
    marks: list[tuple[float, str]] = (),
) -> list[str]:
    """Draw the four panels, with a dashed line at each (x, label) of `marks`; returns the
    metric names that were drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    drawn = []
    for ax, (panel, matches) in zip(axes.flat, PANELS, strict=True):
        keys = sorted(k for k in series if matches(k.lower()))
        for key in keys:
            xs, ys = zip(*series[key], strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        drawn.extend(keys)
        for x, label in marks:
            ax.axvline(x, color="gray", linestyle="--", linewidth=1)
            ax.text(x, 1.0, f" {label}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        # No offset ("+1.098"): a flat curve must not look like it moves.
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:  # temp name + rename: never a half-written PNG
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="DLLogger JSON-lines file (e.g. model_dir/log.json)")
    parser.add_argument("-o", "--output", help="PNG path (default: the log path with .png)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.log):
        parser.error(f"log file {args.log!r} does not exist")
    try:
        records = read_log(args.log)
    except ValueError as err:
        parser.error(str(err))
    series, xlabel, epoch_x = _series_and_epoch_x(records)
    if few_classes(args.log):
        series = {k: v for k, v in series.items() if "top5" not in k}
    if not any(matches(k.lower()) for k in series for _, matches in PANELS):
        parser.error(f"{args.log}: no loss, accuracy, lr or throughput values to plot")
    out_path = args.output or os.path.splitext(args.log)[0] + ".png"
    params = run_params(records)
    marks = [(epoch_x(epoch), label) for epoch, label in boundaries(params)]
    drawn = plot(series, xlabel, run_title(args.log, params), out_path, marks)
    print(f"wrote {out_path} ({len(drawn)} curves: {', '.join(drawn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
