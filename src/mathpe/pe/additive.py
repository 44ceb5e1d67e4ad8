"""Additive PEs: a (batch, seq, hidden) vector added to the token embeddings before the first layer."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from mathpe.pe.base import PositionalEncoding, float32_compute
from mathpe.pe.registry import register


def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) positions -> (..., dim) float32 sinusoids of Vaswani et al. 2017 (sin on even, cos on odd dims)."""
    half = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    angles = positions.float().unsqueeze(-1) * torch.exp(half * (-math.log(10000.0) / dim))
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    return table[..., :dim]


class AdditiveEncoding(PositionalEncoding):
    """Base of the additive family; subclasses implement ``embed(position_ids, input_ids=None, **extra)``."""

    kind: ClassVar[str] = "additive"

    def embed(
        self, position_ids: torch.Tensor, input_ids: torch.Tensor | None = None, **extra: torch.Tensor
    ) -> torch.Tensor:
        """(batch, seq) positions -> (batch, seq, hidden) float32 embeddings to add to the token embeddings."""
        raise NotImplementedError


@register("sinusoidal")
class Sinusoidal(AdditiveEncoding):
    """Fixed sinusoidal absolute encoding (Vaswani et al. 2017), times a learnable scale initialised to 1."""

    def __init__(self, *, num_heads: int, head_dim: int, hidden_size: int, max_position: int) -> None:
        super().__init__(
            num_heads=num_heads, head_dim=head_dim, hidden_size=hidden_size, max_position=max_position
        )
        self.scale = nn.Parameter(torch.ones(()))

    def embed(
        self, position_ids: torch.Tensor, input_ids: torch.Tensor | None = None, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(position_ids.device):
            return sinusoidal_table(position_ids, self.hidden_size) * self.scale.float()
