"""`OptimizerConfig`, importable without TensorFlow.

Its field defaults are the one place the optimizer defaults live: runtime/flags.py takes the
optimizer flags' defaults from them before TensorFlow loads; utils.optimizers builds from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer flags of the command line.

    Attributes:
      name: one of OPTIMIZERS (`--optimizer`).
      momentum: momentum of rmsprop / momentum (`--momentum`).
      beta_1: first-moment decay of adam / adamw / lamb.
      beta_2: second-moment decay of adam / adamw / lamb.
      nesterov: Nesterov momentum for `momentum`.
      epsilon: `--opt_epsilon` of rmsprop / adam / adamw / lamb.
      rho: RMSProp's discounting factor (`--decay`).
      weight_decay: L2 coefficient or decoupled decay, see utils.optimizers.
      grad_clip_norm: clip the global gradient norm to this value; 0 or None for no clipping.
    """

    name: str = "rmsprop"
    momentum: float = 0.9
    # NOTE: the reference defaults beta_1 = beta_2 = 0.0, which turns Adam into sign-SGD-like
    # updates; these are Keras' (and the papers') defaults.
    beta_1: float = 0.9
    beta_2: float = 0.999
    nesterov: bool = False
    epsilon: float = 0.001
    rho: float = 0.9
    weight_decay: float = 5e-6
    grad_clip_norm: float | None = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> OptimizerConfig:
        """The optimizer of a run's resolved params (the flags named in Attributes)."""
        return cls(
            name=params["optimizer"],
            momentum=params["momentum"],
            beta_1=params["beta_1"],
            beta_2=params["beta_2"],
            nesterov=params["nesterov"],
            epsilon=params["opt_epsilon"],
            rho=params["decay"],
            weight_decay=params["weight_decay"],
            grad_clip_norm=params["grad_clip_norm"] or None,
        )
