"""Shared helpers for the model-zoo tests: config paths, published figures, cached profiles."""

from __future__ import annotations

import functools
import os

import pytest

from scripts.model_table import model_row
from tests.helpers import ROOT

# Building B5-B7 and V2-M/L/XL takes 2.5-10 s each on a 2-core box (with keras.applications'
# model for the parameter counts): the slow suite checks them, the default one the smaller
# variants of the same scaling rules.
SLOW = {"b5", "b6", "b7", "m", "l", "xl"}


def cfg_path(variant: str) -> str:
    """The config of a variant: "b0".."b7" (v1), "s".."xl" and "v2-b0".."v2-b3" (v2),
    "lite0".."lite4"."""
    if variant.startswith("lite"):
        family = "efficientnet_lite"
    elif variant.startswith("v2-"):
        family, variant = "efficientnet_v2", variant[len("v2-") :]
    else:
        family = "efficientnet_v1" if variant.startswith("b") else "efficientnet_v2"
    return os.path.join(ROOT, "config", family, f"{variant}_cfg.py")


def variant_params(variants):
    """pytest params over variants, the big ones marked slow."""
    return [pytest.param(v, marks=pytest.mark.slow) if v in SLOW else v for v in variants]


@functools.cache
def profiled(variant: str) -> dict:
    """`scripts.model_table.model_row` for a variant, built once per test session."""
    return model_row(os.path.relpath(cfg_path(variant), ROOT))
