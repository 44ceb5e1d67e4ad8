"""``math_rope``: RoPE with a learnable position scale and digit-place rotations for arithmetic.

Design:

- Every angle is ``position * position_scale * inv_freq`` as in RoPE, with ``position_scale`` a learnable
  scalar initialised to 1, so at initialisation (and on text without digits) the method *is* RoPE, bit for
  bit. A learned scale below 1 compresses positions (interpolation), above 1 sharpens them.
- Digit component: in the ``digit_pairs`` highest-frequency rotary pairs (``digit_fraction`` of the pairs),
  a digit token is rotated by its place in its number instead of its position: place ``r - 1`` for the
  ``r``-th digit of a run (``digit_runs`` of ``DigitRunsMixin``, counted causally from the first digit; in
  the reversed format that is the place value, see ``mathpe.pe.digits``). Digits of equal place in two
  operands therefore get the same rotation there, and the attention score of those pairs between two
  digits depends only on their place difference, wherever the operands sit; the other pairs keep the
  ordinary positions, so the model still knows which operand a digit belongs to. Non-digit tokens use
  their ordinary (scaled) position in every pair, so they are encoded exactly as by RoPE.
- Why the highest frequencies: places are small integers (0 to a few tens), and a pair separates places
  ``p`` and ``p + 1`` by ``inv_freq`` radians. The fastest pairs (1, 0.56, 0.32, ... rad per place with
  head_dim 32) tell neighbouring places apart sharply; the slowest (1e-4 rad per place) would make every
  place look alike. The ordinary positions keep the remaining pairs, which still resolve neighbouring
  positions (the fastest of them turns 0.1-0.3 rad per token).
- The learnable scale applies to positions only, not to places: places are already aligned and small.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mathpe.errors import ConfigError
from mathpe.pe.base import PEShape
from mathpe.pe.digits import DigitRunsMixin
from mathpe.pe.registry import register
from mathpe.pe.rotary import (
    RotaryEncoding,
    rope_inverse_frequencies,
    rotary_angles,
)


def digit_pair_count(num_pairs: int, digit_fraction: float) -> int:
    """How many of ``num_pairs`` rotary pairs carry digit places: ``int(num_pairs * digit_fraction)``, at least 1.

    At least one, so a model with few rotary dims (GPT-NeoX's partial rotary on small heads) still gets its
    digit component.
    """
    if not 0.0 < digit_fraction <= 1.0:
        raise ConfigError(f"digit_fraction must be in (0, 1], got {digit_fraction!r}")
    return max(1, int(num_pairs * digit_fraction))


def digit_place_angles(
    angles: torch.Tensor, digit_runs: torch.Tensor, inv_freq: torch.Tensor, digit_pairs: int
) -> torch.Tensor:
    """Put digit places into the first ``digit_pairs`` pairs of digit tokens' angles.

    Args:
        angles: (batch, seq, pairs) float32 position angles.
        digit_runs: (batch, seq) run length at each token (``digit_run_lengths``): 0 for non-digits.
        inv_freq: (pairs,) float32 inverse frequencies.
        digit_pairs: number of leading (highest-frequency) pairs that carry places.

    Returns:
        (batch, seq, pairs): for digit tokens, pairs ``< digit_pairs`` hold ``(runs - 1) * inv_freq``; all
        other entries are ``angles`` unchanged.
    """
    places = (digit_runs - 1).clamp(min=0)
    place_angles = rotary_angles(places, inv_freq[:digit_pairs])
    is_digit = (digit_runs > 0).unsqueeze(-1)
    leading = torch.where(is_digit, place_angles, angles[..., :digit_pairs])
    return torch.cat((leading, angles[..., digit_pairs:]), dim=-1)


@register("math_rope")
class MathematicalRoPE(DigitRunsMixin, RotaryEncoding):
    """RoPE with a learnable position scale and digit-place rotations (design in the module docstring).

    Options:
        base: frequency base.
        rotary_fraction: fraction of each head's dims that rotate.
        digit_token_ids: ids of the digit tokens; None turns the digit component off (RoPE with a learnable
            scale).
        hint_token_ids: ids of index-hint tokens (``--index_hints``), which stay inside a number (``mathpe.pe.digits``).
        digit_fraction: fraction of the rotary pairs (the highest-frequency ones) that carry digit places.
    """

    float32_parameters: ClassVar[tuple[str, ...]] = ("position_scale",)

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
        digit_token_ids: list[int] | None = None,
        hint_token_ids: list[int] | None = None,
        digit_fraction: float = 0.25,
    ) -> None:
        super().__init__(shape, base=base, rotary_fraction=rotary_fraction)
        self.digit_pairs = digit_pair_count(self.rotary_dim // 2, digit_fraction)
        self.init_digit_runs(digit_token_ids, hint_token_ids)
        self.register_buffer("inv_freq", rope_inverse_frequencies(self.rotary_dim, self.base))
        self.position_scale = nn.Parameter(torch.ones(()))

    def angles(self, position_ids: torch.Tensor, digit_runs: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq) positions and digit run lengths -> (batch, seq, rotary_dim // 2) float32 angles."""
        inv_freq = self.inv_freq.float()
        angles = rotary_angles(position_ids.float() * self.position_scale.float(), inv_freq)
        if digit_runs is None or not self.digit_token_ids:
            return angles
        return digit_place_angles(angles, digit_runs, inv_freq, self.digit_pairs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, digit_pairs={self.digit_pairs}, digits={len(self.digit_token_ids)}"
