"""scripts/model_table.py: MACs/FLOPs against the papers, output formats, bad input.

Papers' "FLOPs" are multiply-adds (MACs): EfficientNet table 2 (B0-B7 at their resolution) and
EfficientNetV2 table 7 / automl README (S 384, M 480, L 480, XL 512; B0..B3 at 224, 240, 260,
300 from the automl README's V2-B table); EfficientNet-Lite README (efficientnet/lite: "MAdds"
407M, 631M, 899M, 1.44B, 2.64B; params 4.7M ... 13.0M).
"""

import json
import os

import pytest

from scripts.model_table import format_rows, main
from tests.helpers.model_zoo import ROOT, cfg_path, profiled, variant_params

PAPER_GMACS = {
    "b0": 0.39,
    "b1": 0.70,
    "b2": 1.0,
    "b3": 1.8,
    "b4": 4.2,
    "b5": 9.9,
    "b6": 19.0,
    "b7": 37.0,
    "s": 8.8,
    "m": 24.0,
    "l": 53.0,
    "xl": 94.0,
    "v2-b0": 0.72,
    "v2-b1": 1.2,
    "v2-b2": 1.7,
    "v2-b3": 3.0,
    "lite0": 0.407,
    "lite1": 0.631,
    "lite2": 0.899,
    "lite3": 1.44,
    "lite4": 2.64,
}
PAPER_PARAMS_M = {
    "b0": 5.3,
    "b1": 7.8,
    "b2": 9.2,
    "b3": 12.0,
    "b4": 19.0,
    "b5": 30.0,
    "b6": 43.0,
    "b7": 66.0,
    "s": 22.0,
    "m": 54.0,
    "l": 120.0,
    "xl": 208.0,
    "v2-b0": 7.1,
    "v2-b1": 8.1,
    "v2-b2": 10.1,
    "v2-b3": 14.4,
    "lite0": 4.7,
    "lite1": 5.4,
    "lite2": 6.1,
    "lite3": 8.2,
    "lite4": 13.0,
}
# V2-L: the conv/dense MAC count of this exact architecture (params equal automl's and
# keras.applications') is 56.08 G at 480, 5.8% above the paper's rounded "53B"; the paper's
# figure came from TF's profiler on automl's graph. The Lite README counts more than conv and
# dense MACs (Lite0's 407M exceeds B0's 390M although Lite0 is B0 without squeeze-excitation):
# ours are 3-6% below it (Lite0: 0.385 G). Every other variant is within 5%.
TOLERANCE = {"l": 0.06, "lite0": 0.06}


@pytest.mark.parametrize("variant", variant_params(PAPER_GMACS))
def test_macs_and_params_match_papers(variant):
    row = profiled(variant)
    paper = PAPER_GMACS[variant]
    assert row["gmacs"] == pytest.approx(paper, rel=TOLERANCE.get(variant, 0.05))
    assert row["gflops"] == pytest.approx(2 * row["macs"] / 1e9, abs=1e-3)
    assert row["trainable_m"] == pytest.approx(PAPER_PARAMS_M[variant], rel=0.05)


def test_formats():
    rows = [profiled("b0")]
    table = format_rows(rows, "table").splitlines()
    assert "GMACs" in table[0] and "efficientnet-b0" in table[1] and "5,330,564" in table[1]
    markdown = format_rows(rows, "markdown").splitlines()
    assert markdown[1].startswith("|---") and markdown[2].count("|") == 8
    assert json.loads(format_rows(rows, "json"))[0]["params"] == 5_330_564


def test_cli_json_for_one_config(capsys, caplog):
    caplog.set_level("INFO", logger="model_table")
    assert main(["--format", "json", os.path.relpath(cfg_path("b0"), ROOT)]) == 0
    out = capsys.readouterr()
    (row,) = json.loads(out.out)
    assert (row["model"], row["resolution"], row["params"]) == ("efficientnet-b0", 224, 5_330_564)
    assert row["gmacs"] == pytest.approx(0.386, abs=1e-3)
    assert "[1/1] profiling" in caplog.text


def test_cli_bad_config_path_exits_2(capsys):
    assert main(["config/nope_cfg.py"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: config file not found: config/nope_cfg.py"
    )
