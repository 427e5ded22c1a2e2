"""Print parameters and compute cost of every EfficientNet config at its resolution.

    python scripts/model_table.py                      # all configs, plain table
    python scripts/model_table.py --format markdown    # for the README
    python scripts/model_table.py --format json config/efficientnet_v1/b0_cfg.py

Compute is counted analytically from the built model's layer graph (`model.profile`; no forward
pass): GMACs = multiply-accumulates of one image, which is what the EfficientNet papers call
"FLOPs" (B0: 0.39B). GFLOPs = 2 x GMACs (a multiply-add counted as two operations).
Resolution = the config's eval_img_size.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402

from config.loader import ConfigError, load_config  # noqa: E402
from model import build_model  # noqa: E402
from model.profile import profile_model  # noqa: E402

logger = logging.getLogger("model_table")

COLUMNS = (
    ("model", "model"),
    ("params", "params"),
    ("params_m", "params (M)"),
    ("trainable_m", "trainable (M)"),
    ("resolution", "resolution"),
    ("gmacs", "GMACs (paper 'FLOPs')"),
    ("gflops", "GFLOPs (2 x MACs)"),
)


FAMILIES = ("efficientnet_v1", "efficientnet_v2", "efficientnet_lite")
_V2_SIZES = ("s", "m", "l", "xl")


def _variant_order(path: str) -> tuple:
    """b0, b1, ... (and lite0, ...) by name, then the V2 sizes S, M, L, XL."""
    variant = os.path.basename(path)[: -len("_cfg.py")]
    size = _V2_SIZES.index(variant) if variant in _V2_SIZES else -1
    return (size, variant)


def default_configs() -> list[str]:
    """All variant configs shipped in config/ (v1, v2, Lite), as repo-relative paths."""
    paths = []
    for family in FAMILIES:
        found = glob.glob(os.path.join(ROOT, "config", family, "*_cfg.py"))
        paths += sorted(found, key=_variant_order)
    return [os.path.relpath(p, ROOT) for p in paths]


def model_row(cfg_path: str, mparams: str | None = None) -> dict:
    """Build one config's model and profile it at its eval resolution.

    Args:
      cfg_path: path of a `*_cfg.py` module.
      mparams: optional `--mparams`-style overrides (`k=v,...`).

    Returns:
      A dict with the keys of COLUMNS plus "config", "macs" and "trainable_params".
    """
    config = load_config(cfg_path, mparams)
    resolution = config["eval_img_size"]
    model = build_model(config, input_shape=(resolution, resolution, 3))
    prof = profile_model(model, resolution)
    keras.backend.clear_session()  # keep memory flat over all the models
    return {
        "model": config["name"],
        "config": cfg_path,
        "params": prof.params,
        "params_m": round(prof.params / 1e6, 2),
        "trainable_params": prof.trainable_params,
        "trainable_m": round(prof.trainable_params / 1e6, 2),
        "resolution": resolution,
        "macs": prof.macs,
        "gmacs": round(prof.macs / 1e9, 3),
        "gflops": round(prof.flops / 1e9, 3),
    }


def _cell(key: str, value) -> str:
    if key == "params":
        return f"{value:,}"
    if key in ("gmacs", "gflops"):
        return f"{value:.3f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_rows(rows: list[dict], fmt: str) -> str:
    """Render rows as "table" (aligned text), "markdown" or "json"."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    header = [title for _, title in COLUMNS]
    body = [[_cell(key, row[key]) for key, _ in COLUMNS] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        for cells in [header, *body]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="config modules (default: all shipped ones)")
    parser.add_argument(
        "--format",
        choices=("table", "markdown", "json"),
        default="table",
        help="output format (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = args.configs or default_configs()
    rows = []
    try:
        for i, path in enumerate(paths, start=1):
            logger.info("[%d/%d] profiling %s", i, len(paths), path)
            rows.append(model_row(path))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_rows(rows, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
