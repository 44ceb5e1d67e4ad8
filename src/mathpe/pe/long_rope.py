"""``long_rope``: RoPE with context extension (position interpolation, NTK-aware, dynamic NTK, YaRN).

The frequency functions below are ports of transformers' rope initialisation functions
(``transformers.modeling_rope_utils``: ``_compute_linear_scaling_rope_parameters``,
``_compute_dynamic_ntk_parameters``, ``_compute_yarn_parameters``) written as small pure functions of plain
numbers, and tests check they return the same tensors. They are ported rather than called because
transformers' functions read a ``PreTrainedConfig`` (rebuilt and re-standardised on every call) and dynamic
NTK needs its frequencies per forward, on the positions' device. transformers has no static NTK-aware
scaling; ``ntk_scaled_base`` is the formula of bloc97's NTK-aware scaling.

Choice of scaling (default ``"yarn"``):

- ``linear`` (position interpolation, Chen et al. 2023): positions divided by ``factor`` (transformers
  divides the inverse frequencies instead, which is the same).
- ``ntk``: static NTK-aware base ``base * factor ** (d / (d - 2))``: the highest frequency is kept, the
  lowest is interpolated by exactly ``factor``.
- ``dynamic`` (dynamic NTK): the NTK base computed from the current length ``max(position_ids) + 1`` once it
  exceeds ``original_max_position``, as transformers' dynamic rope. Cache caveat: a cached key keeps the
  rotation of the forward that computed it, so step-by-step decoding equals a full forward only while the
  sequence stays within ``original_max_position`` (the frequencies are plain RoPE's there) or when the whole
  sequence goes through one forward. transformers' dynamic rope behaves the same; ours is stateless (it does
  not keep the largest length seen, as transformers' module does until it resets).
- ``yarn`` (Peng et al. 2023): NTK-by-parts interpolation (high frequencies kept, low ones interpolated by
  ``factor``, a linear ramp between ``beta_fast`` and ``beta_slow`` rotations over ``original_max_position``)
  and an attention factor multiplying cos and sin. Static, hence exact under cached decoding: the default.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from mathpe.errors import ConfigError
from mathpe.pe.base import PEShape
from mathpe.pe.registry import register
from mathpe.pe.rotary import (
    RotaryEncoding,
    rope_exponents,
    rope_inverse_frequencies,
    rotary_angles,
)

SCALINGS = ("linear", "ntk", "dynamic", "yarn")


def linear_scaled_inverse_frequencies(rotary_dim: int, base: float, factor: float) -> torch.Tensor:
    """(rotary_dim // 2,) RoPE inverse frequencies divided by ``factor`` (position interpolation)."""
    return rope_inverse_frequencies(rotary_dim, base) / factor


def ntk_scaled_base(base: float, factor: float, rotary_dim: int) -> float:
    """NTK-aware base ``base * factor ** (d / (d - 2))``: the lowest frequency is divided by ``factor``."""
    return base * factor ** (rotary_dim / (rotary_dim - 2))


def dynamic_ntk_base(
    base: float, factor: float, rotary_dim: int, seq_len: torch.Tensor, original_max_position: int
) -> torch.Tensor:
    """0-d float32 tensor: dynamic NTK's base for a sequence of ``seq_len`` tokens (a 0-d int tensor).

    ``base * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))`` with ``L = max(seq_len, L0)``; equals
    ``base`` up to ``L0 = original_max_position``.
    """
    seq_len = torch.clamp(seq_len, min=original_max_position)
    stretch = (factor * seq_len / original_max_position) - (factor - 1)
    return base * stretch ** (rotary_dim / (rotary_dim - 2))


def yarn_attention_factor(factor: float) -> float:
    """YaRN's default attention factor ``0.1 * ln(factor) + 1`` (1 for ``factor <= 1``)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_inverse_frequencies(
    rotary_dim: int,
    base: float,
    factor: float,
    original_max_position: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> torch.Tensor:
    """(rotary_dim // 2,) YaRN inverse frequencies (NTK-by-parts, transformers' ``truncate=True``).

    Pair ``i`` keeps its frequency when it turns more than ``beta_fast`` times over ``original_max_position``
    positions, is divided by ``factor`` when it turns fewer than ``beta_slow`` times, and blends linearly in
    between.
    """

    def pair_index_of(rotations: float) -> float:
        """The (fractional) pair index that turns ``rotations`` times over the original length."""
        wavelength_ratio = original_max_position / (rotations * 2 * math.pi)
        return (rotary_dim * math.log(wavelength_ratio)) / (2 * math.log(base))

    low = max(math.floor(pair_index_of(beta_fast)), 0)
    high = min(math.ceil(pair_index_of(beta_slow)), rotary_dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: keep the original frequency (extrapolate), 0: divide by factor (interpolate)
    powers = base ** rope_exponents(rotary_dim)
    return (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep


@register("long_rope")
class LongSequenceRoPE(RotaryEncoding):
    """RoPE extended beyond its training length by frequency scaling (see the module docstring).

    Options:
        base: frequency base of the underlying RoPE.
        rotary_fraction: fraction of each head's dims that rotate.
        scaling: ``"yarn"`` (default, cache-exact), ``"linear"``, ``"ntk"`` or ``"dynamic"``.
        factor: context extension factor (>= 1).
        original_max_position: the length the frequencies were made for (dynamic, yarn); defaults to
            ``max_position``.
        beta_fast, beta_slow: YaRN's ramp bounds, in rotations over ``original_max_position``.
        attention_factor: YaRN's cos/sin multiplier; None for ``0.1 * ln(factor) + 1``. YaRN only.
    """

    #: The scalings transformers also has (as ``rope_type``): a model's scaled RoPE swaps to this PE.
    rope_types: ClassVar[tuple[str, ...]] = ("linear", "dynamic", "yarn")

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
        scaling: str = "yarn",
        factor: float = 4.0,
        original_max_position: int | None = None,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        attention_factor: float | None = None,
    ) -> None:
        super().__init__(shape, base=base, rotary_fraction=rotary_fraction)
        if scaling not in SCALINGS:
            raise ConfigError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        if not factor >= 1.0:
            raise ConfigError(f"factor must be >= 1, got {factor!r}")
        if scaling in ("ntk", "dynamic") and self.rotary_dim < 4:
            raise ConfigError(f"scaling={scaling!r} needs at least 4 rotary dims, got {self.rotary_dim}")
        self.original_max_position = (
            shape.max_position if original_max_position is None else original_max_position
        )
        if not (isinstance(self.original_max_position, int) and self.original_max_position >= 1):
            raise ConfigError(
                f"original_max_position must be a positive integer, got {original_max_position!r}"
            )
        if not beta_fast > beta_slow > 0:
            raise ConfigError(
                f"need beta_fast > beta_slow > 0, got beta_fast={beta_fast!r}, beta_slow={beta_slow!r}"
            )
        if attention_factor is not None and (scaling != "yarn" or not attention_factor > 0):
            raise ConfigError(
                f"attention_factor={attention_factor!r} needs scaling='yarn' and a value > 0 (got {scaling!r})"
            )
        self.scaling = scaling
        self.factor = float(factor)
        if scaling == "linear":
            inv_freq = linear_scaled_inverse_frequencies(self.rotary_dim, self.base, self.factor)
        elif scaling == "ntk":
            inv_freq = rope_inverse_frequencies(
                self.rotary_dim, ntk_scaled_base(self.base, self.factor, self.rotary_dim)
            )
        elif scaling == "dynamic":
            inv_freq = rope_inverse_frequencies(self.rotary_dim, self.base)  # used up to original length
        else:
            inv_freq = yarn_inverse_frequencies(
                self.rotary_dim, self.base, self.factor, self.original_max_position, beta_fast, beta_slow
            )
            self.attention_scaling = (
                yarn_attention_factor(self.factor) if attention_factor is None else float(attention_factor)
            )
        self.register_buffer("inv_freq", inv_freq)

    def inverse_frequencies(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(rotary_dim // 2,) float32 frequencies for this forward (they depend on its length if dynamic)."""
        if self.scaling != "dynamic":
            return self.inv_freq.float()
        seq_len = position_ids.max().long() + 1
        scaled_base = dynamic_ntk_base(
            self.base, self.factor, self.rotary_dim, seq_len, self.original_max_position
        )
        scaled = rope_inverse_frequencies(self.rotary_dim, scaled_base)
        return torch.where(seq_len > self.original_max_position, scaled, self.inv_freq.float())

    def angles(self, position_ids: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        return rotary_angles(position_ids, self.inverse_frequencies(position_ids))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scaling={self.scaling}, factor={self.factor}"
