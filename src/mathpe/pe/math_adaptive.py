"""``math_adaptive``: rotary encoding whose frequencies and positions adapt to the content.

Each token ``t`` with (contextual) position ``p_t`` is rotated in pair ``i`` by the angle

    theta_{t,i} = p_t * inv_freq_i * frequency_scale_i * m_{t,i}

- ``frequency_scale`` (pairs,): learnable per-frequency adjustments, initialised to 1.
- ``m_t = 1 + max_modulation * tanh(W h_t + c)`` (pairs,): a per-token modulation predicted from the
  layer's input ``h_t`` (``uses_hidden_states``), with ``W``, ``c`` initialised to 0 (so ``m = 1``). It lets a
  layer slow down or speed up the rotation of, e.g., digits relative to words. With ``m != 1`` the score of
  two tokens is no longer a function of ``p_i - p_j`` alone: that is the point (content decides the scale).
- Contextual positions (``contextual_positions=True``): ``p_t = position_t + shift_t`` with
  ``shift_t = sum_{s <= t, s real} (g_s - 1)`` and a gate ``g_s = 2 * sigmoid(w . e_s + b)`` in (0, 2) from the
  token embedding ``e_s`` (``w = 0``, ``b = 0`` at init, so ``g = 1`` exactly). With the usual positions
  (real tokens counted from 0) this is ``p_t = sum_{s <= t} g_s - 1``: a gated count of the tokens so far
  (CoPE-like), where a token with gate < 1 advances the position less. Writing it as a shift of the given
  positions keeps explicit ``position_ids`` (offsets, randomised positions) meaningful. Padding tokens
  have no gate (they add nothing).

At initialisation every factor is exactly 1 and every shift exactly 0, so the method equals ``rope``.

Cached decoding is exact: a token's rotation depends only on its own hidden state and on its causal
position; ``prepare`` carries the running shift ``(batch,)`` to the next step, and cached keys keep the
rotation of their own token, which a full forward computes identically.

All weights that set angles are kept in float32 (``float32_parameters``) and the angles are computed in
float32; in half precision the modulation still sees the rounded hidden states, an error that grows with
the position like any content-dependent angle.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mathpe.pe.base import float32_compute
from mathpe.pe.registry import register
from mathpe.pe.rotary import (
    RotaryEncoding,
    check_base,
    rope_inverse_frequencies,
    rotary_angles,
    rotary_dim_for,
)


def frequency_modulation(
    hidden_states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, max_modulation: float
) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, seq, pairs) float32 ``1 + max_modulation * tanh(h W^T + c)``.

    ``weight`` is (pairs, hidden), ``bias`` (pairs,).
    """
    logits = nn.functional.linear(hidden_states.float(), weight.float(), bias.float())
    return 1.0 + max_modulation * torch.tanh(logits)


def token_gates(
    inputs_embeds: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """(batch, seq, hidden) embeddings -> (batch, seq) float32 gates ``2 * sigmoid(e . w + b)``; 0 at padding.

    ``weight`` is (hidden,), ``bias`` a 0-d tensor.
    """
    gates = 2.0 * torch.sigmoid(inputs_embeds.float() @ weight.float() + bias.float())
    if attention_mask is not None:
        gates = gates * attention_mask.to(gates.dtype)
    return gates


def contextual_position_shift(
    gates: torch.Tensor, attention_mask: torch.Tensor | None, carry: torch.Tensor | None = None
) -> torch.Tensor:
    """Running ``sum_{s <= t} (g_s - 1)`` over real tokens: how far contextual positions move from counts.

    Args:
        gates: (batch, seq) gates, 0 at padding.
        attention_mask: (batch, seq) 1 for real tokens, 0 for padding, or None (all real).
        carry: (batch,) shift at the last token of the previous cached step, or None for 0.

    Returns:
        (batch, seq) float32 shifts; the last column is the carry for the next step.
    """
    real = torch.ones_like(gates) if attention_mask is None else attention_mask.to(gates.dtype)
    shift = torch.cumsum(gates - real, dim=1)
    return shift if carry is None else shift + carry.to(shift).unsqueeze(1)


@register("math_adaptive")
class MathAdaptive(RotaryEncoding):
    """Rotary encoding with content-adaptive frequencies and gated contextual positions (module docstring).

    Options:
        base: frequency base.
        rotary_fraction: fraction of each head's dims that rotate.
        max_modulation: bound ``a`` of the per-token modulation ``m`` in ``(1 - a, 1 + a)``; in [0, 1).
        contextual_positions: shift positions by the gated token count; False uses the given positions.
    """

    uses_hidden_states: ClassVar[bool] = True
    float32_parameters: ClassVar[tuple[str, ...]] = (
        "frequency_scale",
        "modulation_weight",
        "modulation_bias",
        "gate_weight",
        "gate_bias",
    )

    def __init__(
        self,
        *,
        num_heads: int,
        head_dim: int,
        hidden_size: int,
        max_position: int,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
        max_modulation: float = 0.5,
        contextual_positions: bool = True,
    ) -> None:
        super().__init__(
            num_heads=num_heads,
            head_dim=head_dim,
            hidden_size=hidden_size,
            max_position=max_position,
            rotary_dim=rotary_dim_for(head_dim, rotary_fraction),
        )
        self.base = check_base(base)
        if not 0.0 <= max_modulation < 1.0:
            raise ValueError(
                f"max_modulation must be in [0, 1) so frequencies stay positive, got {max_modulation!r}"
            )
        self.max_modulation = float(max_modulation)
        self.contextual_positions = bool(contextual_positions)
        pairs = self.rotary_dim // 2
        self.register_buffer("inv_freq", rope_inverse_frequencies(self.rotary_dim, self.base))
        self.frequency_scale = nn.Parameter(torch.ones(pairs))
        self.modulation_weight = nn.Parameter(torch.zeros(pairs, hidden_size))
        self.modulation_bias = nn.Parameter(torch.zeros(pairs))
        self.gate_weight = nn.Parameter(torch.zeros(hidden_size))
        self.gate_bias = nn.Parameter(torch.zeros(()))

    def prepare(
        self,
        *,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        state: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``{"position_shift": (batch, seq)}`` and the (batch,) shift to carry, if contextual positions."""
        if not self.contextual_positions:
            return {}, None
        with float32_compute(inputs_embeds.device):
            gates = token_gates(inputs_embeds, self.gate_weight, self.gate_bias, attention_mask)
            shift = contextual_position_shift(gates, attention_mask, state)
        return {"position_shift": shift}, shift[:, -1]

    def angles(
        self,
        position_ids: torch.Tensor,
        hidden_states: torch.Tensor | None = None,
        position_shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, seq) positions -> (batch, seq, rotary_dim // 2) float32 angles.

        Args:
            position_ids: (batch, seq) positions.
            hidden_states: (batch, seq, hidden) layer input for the modulation, or None (no modulation).
            position_shift: (batch, seq) contextual shift from ``prepare``, or None (no shift).
        """
        positions = position_ids.float()
        if position_shift is not None:
            positions = positions + position_shift
        angles = rotary_angles(positions, self.inv_freq.float() * self.frequency_scale.float())
        if hidden_states is None:
            return angles
        return angles * frequency_modulation(
            hidden_states, self.modulation_weight, self.modulation_bias, self.max_modulation
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_modulation={self.max_modulation}, "
            f"contextual_positions={self.contextual_positions}"
        )
