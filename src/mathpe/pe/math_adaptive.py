"""``math_adaptive``: rotary encoding whose phase advances at a content-dependent rate.

RoPE rotates token ``t`` in frequency pair ``f`` by ``t * omega_f``: every token advances the phase by the
same step. ``math_adaptive`` lets each token choose its own step, and integrates it, as frequency modulation
does (the phase is the integral of the instantaneous frequency, not the frequency times the time):

    phase_{t,f} = sum_{s <= t, s real} g_s * m_{s,f}  - 1
    angle_{t,f} = phase_{t,f} * omega_f * frequency_scale_f

- ``g_s = 2 * sigmoid(w . e_s + b)`` in (0, 2): a gate from the token embedding ``e_s`` (``w = 0``,
  ``b = 0`` at init, so ``g = 1`` exactly). A gated count of the tokens so far is a contextual position:
  a token with a small gate barely advances the position (CoPE, Golovneva et al. 2024, "Contextual Position
  Encoding: Learning to Count What's Important", which computes its gates from query-key products instead).
  ``contextual_positions=False`` fixes the gates at 1.
- ``m_{s,f} = 1 + max_modulation * tanh(W e_s + c)_f`` in (1 - a, 1 + a): a per-pair modulation of that step
  (``W``, ``c`` zero at init, so ``m = 1``), e.g. to let digits turn the fast pairs more slowly than words.
  ``modulation=False`` fixes it at 1.
- ``frequency_scale`` (pairs,): learnable per-frequency adjustments, initialised to 1.
- Padding contributes no step, and the ``- 1`` puts the first real token at phase 0, as position 0.

Why integrate rather than multiply (``t * omega_f * m_{t,f}``, the previous design): the phase difference of
two tokens, ``phase_i - phase_j = sum_{j < s <= i} g_s m_s``, depends only on the tokens between them, so the
attention score stays a relative encoding: moving a span elsewhere in the context, or behind a longer
prompt, does not change how its tokens see each other. With ``t * m_t`` the relative angle of two neighbours
at position 1000 moves by ``1000 * (m_i - m_j)``, and rounding ``m`` to half precision moves angles in
proportion to the position; here each step is bounded in (0, 2 * (1 + a)), and an error in one step moves
later phases by that error only. Rounding the embeddings to bfloat16 (relative error ~4e-3) moves a step by
about that much, so the phase of two tokens ``d`` apart drifts as a random walk of ~4e-3 * sqrt(d), where
``t * m`` drifts by ~t * 4e-3. With ``a < 1`` and ``g > 0`` every step is positive: the
phase keeps the order of the tokens.

Explicit positions. The model derives ``position_ids`` (real tokens counted from 0), but callers may pass
others (packed sequences, offsets). The PE therefore applies the content as a shift of the given positions:

    angle_{t,f} = (position_t + shift_{t,f}) * omega_f * frequency_scale_f,
    shift_{t,f} = sum_{s <= t, s real} (g_s * m_{s,f} - 1)

With the usual positions ``position_t + shift_{t,f} = phase_{t,f}`` above; with others, each real token
still moves its pair's phase by ``g m - 1`` beyond what the positions say. Scores depend on phase
differences only, so the shift a packed document inherits from the documents before it is a constant that
cancels within it: packing needs no reset. ``prepare`` computes the shift once per forward from the new
tokens' embeddings (the model then computes cos/sin once for all layers), and carries the shift at the last
token, (batch, pairs), to the next cached step, so cached decoding is exact.
Without a ``position_shift`` (e.g. ``apply`` called directly) the method is RoPE with ``frequency_scale``.

At initialisation ``g = m = 1`` exactly, every shift is exactly 0 and the method equals ``rope`` bit for bit,
padded or not. Gates and modulations are computed in float32 from the embeddings, whatever their dtype;
the running sum is accumulated in float64 (float32 on MPS), so at long lengths it adds no more rounding
than the float32 product ``position * omega`` of RoPE. The weights are ``float32_parameters``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mathpe.errors import ConfigError
from mathpe.pe.base import PEShape, float32_compute
from mathpe.pe.registry import register
from mathpe.pe.rotary import (
    RotaryEncoding,
    rope_inverse_frequencies,
    rotary_angles,
)


def accumulation_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """float64 for running sums (exact to ~1e-12 at any length), except on MPS, which has no float64."""
    return dtype if device.type == "mps" else torch.float64


def token_gates(
    inputs_embeds: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """(batch, seq, hidden) embeddings -> (batch, seq) gates ``2 * sigmoid(e . w + b)``; 0 at padding.

    Gates lie in (0, 2). ``weight`` is (hidden,), ``bias`` a 0-d tensor. Computed in float32 whatever the
    inputs' dtype.
    """
    gates = 2.0 * torch.sigmoid(inputs_embeds.float() @ weight.float() + bias.float())
    if attention_mask is not None:
        gates = gates * attention_mask.float()
    return gates


def frequency_modulation(
    inputs_embeds: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, max_modulation: float
) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, seq, pairs) ``1 + max_modulation * tanh(e W^T + c)``.

    ``weight`` is (pairs, hidden), ``bias`` (pairs,). Computed in float32 whatever the inputs' dtype.
    """
    logits = nn.functional.linear(inputs_embeds.float(), weight.float(), bias.float())
    return 1.0 + max_modulation * torch.tanh(logits)


def phase_shift(
    steps: torch.Tensor, attention_mask: torch.Tensor | None, carry: torch.Tensor | None = None
) -> torch.Tensor:
    """Running ``sum_{s <= t} (step_s - 1)`` over real tokens: how far the phase runs ahead of the count.

    Args:
        steps: (batch, seq, pairs) phase steps ``g * m``, 0 at padding.
        attention_mask: (batch, seq) 1 for real tokens, 0 for padding, or None (all real).
        carry: (batch, pairs) shift at the last token of the previous cached step, or None for 0.

    Returns:
        (batch, seq, pairs) shifts in float64 (float32 on MPS); ``[:, -1]`` is the carry for the next step.
    """
    dtype = accumulation_dtype(steps.device, steps.dtype)
    real = 1.0 if attention_mask is None else attention_mask.to(dtype).unsqueeze(-1)
    shift = torch.cumsum(steps.to(dtype) - real, dim=1)
    return shift if carry is None else shift + carry.to(shift).unsqueeze(1)


@register("math_adaptive")
class MathAdaptive(RotaryEncoding):
    """Rotary encoding whose phase integrates content-dependent steps (module docstring).

    Options:
        base: frequency base.
        rotary_fraction: fraction of each head's dims that rotate.
        max_modulation: bound ``a`` of the per-pair modulation ``m`` in ``(1 - a, 1 + a)``; in [0, 1).
        contextual_positions: gate each token's step from its embedding (CoPE-like counting); False: gate 1.
        modulation: modulate each pair's step from the token embedding; False: ``m = 1``.
    """

    float32_parameters: ClassVar[tuple[str, ...]] = (
        "frequency_scale",
        "modulation_weight",
        "modulation_bias",
        "gate_weight",
        "gate_bias",
    )

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
        max_modulation: float = 0.5,
        contextual_positions: bool = True,
        modulation: bool = True,
    ) -> None:
        super().__init__(shape, base=base, rotary_fraction=rotary_fraction)
        if not 0.0 <= max_modulation < 1.0:
            raise ConfigError(
                f"max_modulation must be in [0, 1) so frequencies stay positive, got {max_modulation!r}"
            )
        self.max_modulation = float(max_modulation)
        self.contextual_positions = bool(contextual_positions)
        self.modulation = bool(modulation)
        pairs = self.rotary_dim // 2
        self.register_buffer("inv_freq", rope_inverse_frequencies(self.rotary_dim, self.base))
        self.frequency_scale = nn.Parameter(torch.ones(pairs))
        # Only the parts in use are parameters (no unused parameters for DDP); the names stay fixed.
        names = ["frequency_scale"]
        if self.modulation:
            self.modulation_weight = nn.Parameter(torch.zeros(pairs, shape.hidden_size))
            self.modulation_bias = nn.Parameter(torch.zeros(pairs))
            names += ["modulation_weight", "modulation_bias"]
        if self.contextual_positions:
            self.gate_weight = nn.Parameter(torch.zeros(shape.hidden_size))
            self.gate_bias = nn.Parameter(torch.zeros(()))
            names += ["gate_weight", "gate_bias"]
        self.float32_parameters = tuple(names)

    def phase_steps(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, seq, hidden) embeddings -> (batch, seq, pairs) steps ``g_t * m_{t,f}``; 0 at padding."""
        batch, seq, _ = inputs_embeds.shape
        if self.contextual_positions:
            gates = token_gates(inputs_embeds, self.gate_weight, self.gate_bias, attention_mask)
        elif attention_mask is not None:
            gates = attention_mask.float()
        else:
            gates = inputs_embeds.new_ones(batch, seq, dtype=torch.float32)
        if not self.modulation:
            return gates.unsqueeze(-1).expand(batch, seq, self.rotary_dim // 2)
        modulation = frequency_modulation(
            inputs_embeds, self.modulation_weight, self.modulation_bias, self.max_modulation
        )
        return gates.unsqueeze(-1) * modulation

    def prepare(
        self,
        *,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        state: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``{"position_shift": (batch, seq, pairs)}`` and the (batch, pairs) shift to carry.

        Nothing (RoPE with ``frequency_scale``) when both gates and modulation are off.
        """
        if not (self.contextual_positions or self.modulation):
            return {}, None
        if inputs_embeds is None:
            raise ValueError("math_adaptive needs inputs_embeds in prepare()")
        with float32_compute(inputs_embeds.device):
            shift = phase_shift(self.phase_steps(inputs_embeds, attention_mask), attention_mask, state)
        return {"position_shift": shift}, shift[:, -1]

    def token_states(self, extra: dict[str, torch.Tensor], state: torch.Tensor | None) -> torch.Tensor | None:
        """(batch, seq, pairs): the carried shift after each token is that token's shift."""
        return None if state is None else extra["position_shift"]

    def angles(self, position_ids: torch.Tensor, position_shift: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq) positions -> (batch, seq, rotary_dim // 2) float32 angles.

        Args:
            position_ids: (batch, seq) positions.
            position_shift: (batch, seq, pairs) phase shift from ``prepare``, or None (no shift: RoPE).
        """
        frequencies = self.inv_freq.float() * self.frequency_scale.float()
        if position_shift is None:
            return rotary_angles(position_ids, frequencies)
        # Add in the shift's (wider) dtype: one rounding to float32 for position + shift.
        phase = position_ids.to(position_shift.dtype).unsqueeze(-1) + position_shift
        return phase.float() * frequencies

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, max_modulation={self.max_modulation}, "
            f"contextual_positions={self.contextual_positions}, modulation={self.modulation}"
        )
