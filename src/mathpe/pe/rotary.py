"""Rotary PEs: RoPE and the math the rotary family shares (half-split layout of GPT-NeoX and Llama).

The rest of the family builds on ``RotaryEncoding``: ``long_rope`` (context extension, ``long_rope.py``),
``math_rope`` (learnable scale + digit places, ``math_rope.py``) and ``math_adaptive`` (content-adaptive
frequencies and contextual positions, ``math_adaptive.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mathpe.errors import ConfigError
from mathpe.pe.base import PEShape, PositionalEncoding, float32_compute
from mathpe.pe.registry import register


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d): [x1, x2] -> [-x2, x1] with x1, x2 the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``cos.shape[-1]`` dims of q and k; the rest passes through (partial rotary).

    Args:
        q, k: (batch, heads, seq, head_dim).
        cos, sin: (batch, seq, rotary_dim) or (batch, heads, seq, rotary_dim), in q's dtype.
    """
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        if rotary_dim == x.shape[-1]:
            return x * cos + rotate_half(x) * sin
        x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
        return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)

    return rotate(q), rotate(k)


def rope_exponents(rotary_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(rotary_dim // 2,) float32 exponents ``2i / rotary_dim`` of the frequency base."""
    return torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float() / rotary_dim


def rope_inverse_frequencies(rotary_dim: int, base: float | torch.Tensor) -> torch.Tensor:
    """(rotary_dim // 2,) float32: ``base ** (-2i / rotary_dim)``, as transformers' default rope init.

    ``base`` may be a 0-d tensor (dynamic NTK computes it per forward); the result is then on its device.
    """
    device = base.device if isinstance(base, torch.Tensor) else None
    return 1.0 / (base ** rope_exponents(rotary_dim, device))


def check_base(base: float) -> float:
    """The frequency base, validated: it must exceed 1 so that frequencies decrease along the head."""
    if not base > 1.0:
        raise ConfigError(f"base must be > 1, got {base!r}")
    return float(base)


def rotary_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """(batch, seq) int or float positions x (rotary_dim // 2,) frequencies -> (batch, seq, rotary_dim // 2)."""
    return positions.float().unsqueeze(-1) * inv_freq.float()


def rotary_dim_for(head_dim: int, rotary_fraction: float) -> int:
    """Number of rotated dims for a partial-rotary fraction (GPT-NeoX: ``int(head_dim * fraction)``)."""
    if not 0.0 < rotary_fraction <= 1.0:
        raise ConfigError(f"rotary_fraction must be in (0, 1], got {rotary_fraction!r}")
    rotary_dim = int(head_dim * rotary_fraction)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigError(
            f"rotary_fraction={rotary_fraction!r} of head_dim={head_dim} gives {rotary_dim} rotary dims; "
            "it must be an even number >= 2"
        )
    return rotary_dim


class RotaryEncoding(PositionalEncoding):
    """Base of the rotary family: subclasses define ``angles``; cos/sin and rotation are shared.

    ``attention_scaling`` multiplies cos and sin (YaRN's attention factor; 1.0 otherwise). Learnable
    parameters that set the angles belong in ``float32_parameters``: an angle error grows with the position
    (a scale rounded to float16 is off by ~0.1 rad at position 300).
    """

    kind: ClassVar[str] = "rotary"
    float32_buffers: ClassVar[tuple[str, ...]] = ("inv_freq",)

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        base: float,
        rotary_fraction: float,
    ) -> None:
        super().__init__(shape)
        self.rotary_dim = rotary_dim_for(shape.head_dim, rotary_fraction)
        self.base = check_base(base)
        self.attention_scaling = 1.0

    def angles(self, position_ids: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        """(batch, seq) positions -> (batch, seq, rotary_dim // 2) float32 angles."""
        return rotary_angles(position_ids, self.inv_freq)

    def cos_sin(
        self, position_ids: torch.Tensor, dtype: torch.dtype, **extra: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq) positions -> cos, sin of shape (batch, seq, rotary_dim), computed in float32."""
        with float32_compute(position_ids.device):
            angles = self.angles(position_ids, **extra)
            emb = torch.cat((angles, angles), dim=-1)
            cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)

    def apply(
        self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor, **extra: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q, k (batch, heads, seq, head_dim) by the angles of ``position_ids`` (batch, seq)."""
        cos, sin = self.cos_sin(position_ids, q.dtype, **extra)
        return apply_rotary(q, k, cos, sin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rotary_dim={self.rotary_dim}"


@register("rope")
class RoPE(RotaryEncoding):
    """Rotary position embedding (Su et al. 2021), GPT-NeoX / Llama half-split layout.

    Options:
        base: frequency base, 10000 in most models.
        rotary_fraction: fraction of each head's dims that rotate (GPT-NeoX ``rotary_pct``); the rest pass.
    """

    rope_types: ClassVar[tuple[str, ...]] = ("default",)

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
    ) -> None:
        super().__init__(shape, base=base, rotary_fraction=rotary_fraction)
        self.register_buffer("inv_freq", rope_inverse_frequencies(self.rotary_dim, self.base))
