"""Typed block specs for EfficientNet v1/v2 and the pure scaling helpers that expand them.

A stage of the network is described by one `BlockSpec`, written in the compact string form of
google/automl (`efficientnet/efficientnet_builder.py`, `efficientnetv2/effnetv2_configs.py`):

    r2_k3_s1_e1_i24_o24_c1          # 2 repeats, 3x3, stride 1, expand 1, 24 -> 24, fused
    r1_k3_s1_e1_i32_o16_se0.25      # MBConv with squeeze-excitation ratio 0.25

`c1` marks a fused-MBConv stage (automl's conv_type=1); `c0` or no `c` is a regular MBConv.
automl v1 writes strides as `s11`/`s22`; `parse()` accepts that too, `str()` writes `s1`/`s2`.

Scaling (EfficientNet paper, arXiv:1905.11946, section 3.3): channel counts are multiplied by
the width coefficient and rounded to a multiple of `depth_divisor`; repeats are multiplied by the
depth coefficient and rounded up. Stages are expanded into a new list of `PlacedBlock`s; nothing
is mutated in place.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from utils.errors import ConfigError

_TOKEN = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)$")
_KEYS = {
    "r": "repeats",
    "k": "kernel",
    "s": "stride",
    "e": "expand",
    "i": "in_ch",
    "o": "out_ch",
    "se": "se_ratio",
    "c": "fused",
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One stage of (fused-)MBConv blocks before width/depth scaling.

    Attributes:
      repeats: number of blocks in the stage (before depth scaling).
      kernel: depthwise (MBConv) or full (fused) convolution kernel size.
      stride: stride of the first block of the stage (the others use 1).
      expand: expansion ratio of the inverted bottleneck.
      in_ch: input channels of the first block (before width scaling).
      out_ch: output channels of every block (before width scaling).
      se_ratio: squeeze-excitation ratio relative to the block's input channels; 0 = no SE.
      fused: True for fused-MBConv (EfficientNetV2), False for MBConv.
    """

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int
    se_ratio: float = 0.0
    fused: bool = False

    def __post_init__(self):
        for field in ("repeats", "kernel", "stride", "expand", "in_ch", "out_ch"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"block spec field {field}={value!r} must be a positive int")
        if self.kernel % 2 == 0:
            raise ConfigError(f"block spec kernel={self.kernel} must be odd")
        if not 0.0 <= self.se_ratio <= 1.0:
            raise ConfigError(f"block spec se_ratio={self.se_ratio} must be in [0, 1]")

    @classmethod
    def parse(cls, text: str) -> BlockSpec:
        """Decode an automl-style block string, e.g. `r2_k3_s2_e4_i24_o48_c1`.

        Args:
          text: the block string; tokens joined by `_`, each a key (r, k, s, e, i, o, se, c)
            followed by a number. r, k, s, e, i, o are required.

        Returns:
          The BlockSpec.

        Raises:
          ConfigError: on an unknown, repeated, missing or malformed token.
        """
        if not isinstance(text, str):
            raise ConfigError(f"block spec must be a string, got {type(text).__name__}: {text!r}")
        values: dict[str, str] = {}
        for token in text.strip().split("_"):
            match = _TOKEN.match(token)
            if match is None or match.group(1) not in _KEYS:
                raise ConfigError(
                    f"bad block string {text!r}: token {token!r} is not one of "
                    f"{'/'.join(_KEYS)} followed by a number"
                )
            key, value = match.groups()
            if key in values:
                raise ConfigError(f"bad block string {text!r}: {key!r} given twice")
            values[key] = value
        missing = [k for k in ("r", "k", "s", "e", "i", "o") if k not in values]
        if missing:
            raise ConfigError(f"bad block string {text!r}: missing {', '.join(missing)}")
        stride = values["s"]
        # automl v1 writes a square stride as two digits (s11, s22).
        if len(stride) == 2:
            if stride[0] != stride[1]:
                raise ConfigError(f"bad block string {text!r}: non-square stride s{stride}")
            stride = stride[0]
        try:
            ints = {k: int(values[k]) for k in ("r", "k", "e", "i", "o")}
            return cls(
                repeats=ints["r"],
                kernel=ints["k"],
                stride=int(stride),
                expand=ints["e"],
                in_ch=ints["i"],
                out_ch=ints["o"],
                se_ratio=float(values.get("se", 0.0)),
                fused=_parse_conv_type(values.get("c", "0")),
            )
        except ValueError as err:  # ConfigError from the field checks included
            raise ConfigError(f"bad block string {text!r}: {err}") from err

    def __str__(self) -> str:
        text = f"r{self.repeats}_k{self.kernel}_s{self.stride}_e{self.expand}_i{self.in_ch}_o{self.out_ch}"
        if self.se_ratio > 0:
            text += f"_se{self.se_ratio:g}"
        if self.fused:
            text += "_c1"
        return text


def _parse_conv_type(value: str) -> bool:
    if value not in ("0", "1"):
        raise ConfigError(f"conv type c{value} must be c0 (MBConv) or c1 (fused-MBConv)")
    return value == "1"


@dataclasses.dataclass(frozen=True)
class PlacedBlock:
    """One block of the expanded, scaled network.

    Attributes:
      stage: 1-based stage index (row of the block table).
      index: 1-based index of the block inside its stage.
      spec: the block's own spec (repeats=1, scaled channels, this block's stride/in_ch).
      drop_rate: stochastic-depth drop probability of the residual branch.
    """

    stage: int
    index: int
    spec: BlockSpec
    drop_rate: float

    @property
    def name(self) -> str:
        """Stable layer name, e.g. `stage3_block2`; doubles as the weight-import key."""
        return f"stage{self.stage}_block{self.index}"


def round_filters(
    filters: int, width: float, divisor: int, min_depth: int | None, round_down_guard: bool
) -> int:
    """Scale a channel count by `width` and round it to a multiple of `divisor`.

    The rounding settings have no defaults here: they are the model config's
    (`depth_divisor`, `min_depth`, `round_down_guard`; config/defaults.py and the families).

    Args:
      filters: unscaled channel count.
      width: width coefficient.
      divisor: the result is a multiple of this.
      min_depth: lower bound of the result; None means `divisor`.
      round_down_guard: if True (EfficientNet v1), add one `divisor` when rounding lost more
        than 10% of the scaled value, as automl v1 and keras.applications EfficientNet do.
        EfficientNetV2 (automl effnetv2 utils.round_filters) has no such guard.

    Returns:
      The scaled channel count.
    """
    scaled = filters * width
    new_filters = max(min_depth or divisor, int(scaled + divisor / 2) // divisor * divisor)
    if round_down_guard and new_filters < 0.9 * scaled:
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's repeat count by `depth`, rounding up (never below 1 for depth > 0)."""
    return int(math.ceil(depth * repeats))


def parse_blocks(blocks: Sequence[str | BlockSpec]) -> tuple[BlockSpec, ...]:
    """Parse a config's `blocks` entry (strings or BlockSpecs) into BlockSpecs.

    Raises:
      ConfigError: if `blocks` is not a non-empty sequence or an entry is malformed.
    """
    if isinstance(blocks, str) or not isinstance(blocks, Sequence) or not blocks:
        raise ConfigError(
            f"config 'blocks' must be a non-empty list of block strings, got {blocks!r}"
        )
    return tuple(b if isinstance(b, BlockSpec) else BlockSpec.parse(b) for b in blocks)


def expand_blocks(
    specs: Sequence[BlockSpec],
    width: float,
    depth: float,
    divisor: int,
    min_depth: int | None,
    round_down_guard: bool,
    drop_connect_rate: float,
    *,
    fix_head_stem: bool,
) -> list[PlacedBlock]:
    """Scale the stage table and expand it into one PlacedBlock per block.

    The first block of a stage takes the stage's stride and input channels; the others use
    stride 1 and in_ch = out_ch. Block i (0-based) of the n scaled blocks gets the
    stochastic-depth rate `drop_connect_rate * i / n` (linear decay rule, Huang et al. 2016;
    n counts the blocks after depth scaling, as keras.applications EfficientNet does).
    Every argument is the model config's (no defaults repeated here, see `round_filters`).

    With `fix_head_stem` (EfficientNet-Lite, automl efficientnet_model `fix_head_stem`) the
    first and last stages keep their repeats and the first stage reads the unscaled stem
    channels (its `in_ch`); the stem and head convs themselves are the builder's.

    Args:
      specs: the unscaled stage table.
      width: width coefficient.
      depth: depth coefficient.
      divisor: channel rounding unit.
      min_depth: minimum channel count (None = divisor).
      round_down_guard: see `round_filters`.
      drop_connect_rate: stochastic-depth rate reached by the last block.
      fix_head_stem: keep the first/last stage's repeats and the stem channels unscaled.

    Returns:
      A new list of PlacedBlock, in network order.
    """

    def scale(ch: int) -> int:
        return round_filters(ch, width, divisor, min_depth, round_down_guard)

    fixed = {0, len(specs) - 1} if fix_head_stem else set()
    repeats = [
        s.repeats if i in fixed else round_repeats(s.repeats, depth) for i, s in enumerate(specs)
    ]
    total = sum(repeats)
    placed: list[PlacedBlock] = []
    for stage, (spec, count) in enumerate(zip(specs, repeats, strict=True), start=1):
        out_ch = scale(spec.out_ch)
        in_ch = spec.in_ch if fix_head_stem and stage == 1 else scale(spec.in_ch)
        for index in range(1, count + 1):
            first = index == 1
            block = dataclasses.replace(
                spec,
                repeats=1,
                stride=spec.stride if first else 1,
                in_ch=in_ch if first else out_ch,
                out_ch=out_ch,
            )
            placed.append(PlacedBlock(stage, index, block, drop_connect_rate * len(placed) / total))
    return placed
