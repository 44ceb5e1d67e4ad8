"""Bias PEs: a float added to the attention logits as a function of query and key positions."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from mathpe.pe.base import PositionalEncoding, float32_compute
from mathpe.pe.registry import register


def relative_distance(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """(batch, q_len) and (batch, k_len) positions -> (batch, 1, q_len, k_len) float32 ``i - j``."""
    return (query_positions[:, None, :, None] - key_positions[:, None, None, :]).float()


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """(num_heads,) ALiBi slopes: a geometric sequence ``2^(-8/n)``, ``2^(-16/n)``, ... for n a power of 2.

    Other head counts take the slopes of the closest smaller power of two, then every other slope of the
    next power of two (Press et al. 2022, as BLOOM's ``build_alibi_tensor``).
    """
    closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest_power_of_2) - 3)))
    slopes = base ** torch.arange(1, closest_power_of_2 + 1, dtype=torch.float64)
    if closest_power_of_2 != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest_power_of_2) - 3)))
        num_extra = min(closest_power_of_2, num_heads - closest_power_of_2)
        extra = extra_base ** torch.arange(1, 1 + 2 * num_extra, 2, dtype=torch.float64)
        slopes = torch.cat([slopes, extra])
    return slopes.float()


class BiasEncoding(PositionalEncoding):
    """Base of the bias family; subclasses implement ``bias(query_positions, key_positions, **extra)``."""

    kind: ClassVar[str] = "bias"

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        """(batch, q_len), (batch, k_len) positions -> (batch, heads, q_len, k_len) float32 logit bias."""
        raise NotImplementedError


@register("alibi")
class ALiBi(BiasEncoding):
    """ALiBi (Press et al. 2022): bias ``-slope_h * (i - j)``, with a learnable per-head slope multiplier.

    Options:
        learnable_slopes: train the per-head multiplier (initialised to 1, so the start is the paper's ALiBi).
    """

    float32_buffers: ClassVar[tuple[str, ...]] = ("slopes",)

    def __init__(
        self,
        *,
        num_heads: int,
        head_dim: int,
        hidden_size: int,
        max_position: int,
        learnable_slopes: bool = True,
    ) -> None:
        super().__init__(
            num_heads=num_heads, head_dim=head_dim, hidden_size=hidden_size, max_position=max_position
        )
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)
        self.slope_scale = nn.Parameter(torch.ones(num_heads), requires_grad=learnable_slopes)

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(query_positions.device):
            slopes = (self.slopes * self.slope_scale.float()).view(1, -1, 1, 1)
            return -slopes * relative_distance(query_positions, key_positions)
