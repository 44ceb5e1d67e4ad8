"""Bias PEs: a float added to the attention logits as a function of query and key positions.

Every method here returns a float32 tensor that broadcasts to (batch, heads, q_len, k_len); its batch dim is
that of the positions it gets, so positions shared by the batch ((1, len), as ``build_pe_context`` passes them)
give a bias of batch dim 1 that every row reuses. The attention path calls ``bias`` once per forward and every
layer shares the result, so each method's parameters are per head and shared across layers.

Block by block: ``bias_blocks`` gives the same bias one block of queries at a time, from a few small tensors
computed once per forward (its ``inputs``), so an attention path can recompute any block in its backward
instead of keeping a (batch, heads, q_len, k_len) tensor per layer. A PE whose bias depends on ``i - j`` alone
(``distance_only``) makes its blocks from a per-distance table (``distance_bias``), which a ``flex_attention``
``score_mod`` can also index.

The maths lives in small pure functions (``t5_relative_bucket``, ``fire_interpolated_distance``, ...) that the
modules call and the tests check against reference implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mathpe.errors import ConfigError
from mathpe.pe.additive import sinusoidal_table
from mathpe.pe.base import PEShape, PositionalEncoding, float32_compute, require_int
from mathpe.pe.registry import register


def integer_distance(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """(batch, q_len) and (batch, k_len) integer positions -> (batch, 1, q_len, k_len) long ``i - j``.

    The batch dims broadcast (one of them may be 1).
    """
    return query_positions.long()[:, None, :, None] - key_positions.long()[:, None, None, :]


def relative_distance(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """(batch, q_len) and (batch, k_len) positions -> (batch, 1, q_len, k_len) float32 ``i - j``."""
    return integer_distance(query_positions, key_positions).float()


def per_head_lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Look up one learned scalar per head: (n, heads) table, (batch, 1, q, k) index -> (batch, heads, q, k)."""
    return table[index.squeeze(1)].permute(0, 3, 1, 2)


def inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    """The ``x`` with ``softplus(x) == value`` (value > 0), to initialise a softplus-parameterised positive."""
    return value + torch.log(-torch.expm1(-value))


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


def t5_relative_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each relative position ``memory_position - query_position`` (``j - i``).

    Half of the buckets (per direction) hold the exact distances 0 .. max_exact - 1 (``max_exact`` = half the
    buckets of a direction); the rest cover max_exact .. max_distance logarithmically, and every longer
    distance shares the last bucket. Without ``bidirectional``, keys after the query (``j > i``) share bucket
    0 with distance 0. Equal to ``transformers``' ``T5Attention._relative_position_bucket`` (same float ops).

    Args:
        relative_position: integer tensor of any shape, ``j - i``.
        bidirectional: give keys before and after the query separate halves of the buckets.
        num_buckets: total number of buckets.
        max_distance: distances from here on share the last bucket of their direction.

    Returns:
        long tensor of the same shape, values in 0 .. num_buckets - 1.
    """
    relative_position = relative_position.long()
    if bidirectional:
        num_buckets //= 2
        direction = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        direction = torch.zeros_like(relative_position)
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # Clamping below max_exact only changes entries the ``where`` discards; it keeps log() finite there.
    log_fraction = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    logarithmic = (max_exact + (log_fraction * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return direction + torch.where(distance < max_exact, distance, logarithmic)


def fire_interpolated_distance(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    c: torch.Tensor,
    threshold: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """FIRE's progressively interpolated distance ``psi(i - j) / (psi(max(i, L)) + eps)``.

    ``psi(x) = log(|c x| + 1)`` (Li et al. 2023 and their reference code: the absolute value keeps psi
    defined for keys after the query, which causal attention masks anyway).

    Args:
        query_positions: (batch, q_len) positions ``i``.
        key_positions: (batch, k_len) positions ``j``.
        c: scalar log-transform parameter.
        threshold: scalar ``L``; queries before it are normalised by ``psi(L)`` instead of ``psi(i)``.
        eps: keeps the division finite when ``c * max(i, L)`` is 0.

    Returns:
        (batch, 1, q_len, k_len) float32, in [0, 1] for ``j <= i``.
    """
    distance = relative_distance(query_positions, key_positions)
    normaliser = torch.maximum(query_positions.float(), threshold)[:, None, :, None]
    return torch.log(torch.abs(c * distance) + 1) / (torch.log(torch.abs(c * normaliser) + 1) + eps)


def kerple_log_bias(distance: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """KERPLE's logarithmic kernel ``-r1 * log(1 + r2 * |i - j|)``.

    Args:
        distance: (batch, 1, q_len, k_len) float ``i - j``.
        r1, r2: (heads,) positive per-head parameters.

    Returns:
        (batch, heads, q_len, k_len).
    """
    return -r1.view(1, -1, 1, 1) * torch.log1p(r2.view(1, -1, 1, 1) * distance.abs())


def low_rank_position_bias(
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    query_weight: torch.Tensor,
    key_weight: torch.Tensor,
) -> torch.Tensor:
    """Per-head positional attention ``(P_i W^Q_h) . (P_j W^K_h) / sqrt(rank)`` (DIET-ABS).

    Args:
        query_features: (batch, q_len, dim) position features ``P_i``.
        key_features: (batch, k_len, dim) position features ``P_j``.
        query_weight, key_weight: (heads, dim, rank) per-head projections.

    Returns:
        (batch, heads, q_len, k_len).

    The product is associated whichever way costs fewer multiplications: ``(P_q W^Q)(P_k W^K)^T`` when
    queries and keys are as many (training), ``((P_q W^Q) W^K^T) P_k^T`` when a few queries meet many keys
    (cached decoding), which avoids projecting every past key at every step.
    """
    q_len, dim = query_features.shape[-2:]
    rank = query_weight.shape[-1]
    queries = torch.einsum("bqd,hdr->bhqr", query_features, query_weight)
    if q_len * dim < rank * (dim + q_len):
        query_in_key_space = torch.einsum("bhqr,hdr->bhqd", queries, key_weight)
        return query_in_key_space @ key_features.unsqueeze(1).transpose(-1, -2) / math.sqrt(rank)
    keys = torch.einsum("bkd,hdr->bhkr", key_features, key_weight)
    return queries @ keys.transpose(-1, -2) / math.sqrt(rank)


def distance_lookup(
    table: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor, lowest: int
) -> torch.Tensor:
    """Bias from a per-distance table: (heads, n) table of distances ``lowest .. lowest + n - 1``,
    (batch, q_len) and (batch, k_len) positions -> (batch, heads, q_len, k_len)."""
    index = integer_distance(query_positions, key_positions)[:, 0] - lowest  # (batch, q_len, k_len)
    return table[:, index].transpose(0, 1)


@dataclass
class BiasBlocks:
    """A PE's bias of fixed keys, made for any block of queries from ``inputs``.

    Attributes:
        inputs: tensors computed once per forward (a distance table, projected key features, or the PE's
            trainable parameters themselves); the bias is differentiable in them and in nothing else.
        make: ``make(inputs, queries, key_len)``: (batch, q_block) query positions -> (batch, heads, q_block,
            key_len) float32 bias of those queries against the first ``key_len`` keys.
        lowest: for a ``distance_only`` PE, ``inputs[0]`` is its (heads, n) ``distance_bias`` table of the
            distances ``lowest .. lowest + n - 1``; None otherwise.
    """

    inputs: tuple[torch.Tensor, ...]
    make: Callable[[tuple[torch.Tensor, ...], torch.Tensor, int], torch.Tensor]
    lowest: int | None = None


class BiasEncoding(PositionalEncoding):
    """Base of the bias family; subclasses implement ``bias(query_positions, key_positions, **extra)``."""

    kind: ClassVar[str] = "bias"

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        """(batch, q_len), (batch, k_len) positions -> (batch, heads, q_len, k_len) float32 logit bias."""
        raise NotImplementedError

    def distance_only(self) -> bool:
        """True when the bias depends on the distance ``i - j`` alone (not on ``i`` itself, nor on ``extra``)."""
        return False

    def distance_bias(self, distance: torch.Tensor) -> torch.Tensor:
        """(n,) integer distances ``i - j`` -> (heads, n) float32 bias, for a ``distance_only`` PE."""
        return self.bias(distance[None], distance.new_zeros(1, 1))[0, :, :, 0]

    def bias_blocks(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> BiasBlocks:
        """The bias of ``bias(query_positions, key_positions, **extra)``, block by block of queries.

        A ``distance_only`` PE looks its blocks up in one (heads, n) table of every distance the positions
        span; otherwise each block calls ``bias`` again, differentiable in the trainable parameters and in the
        ``extra`` tensors that require grad.
        """
        if self.distance_only():
            lowest = int(query_positions.min() - key_positions.max())
            highest = int(query_positions.max() - key_positions.min())
            table = self.distance_bias(torch.arange(lowest, highest + 1, device=query_positions.device))
            return BiasBlocks(
                (table,),
                lambda inputs, queries, key_len: distance_lookup(
                    inputs[0], queries, key_positions[:, :key_len], lowest
                ),
                lowest,
            )
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        trainable += [tensor for tensor in extra.values() if tensor.requires_grad]
        return BiasBlocks(
            tuple(trainable),
            lambda inputs, queries, key_len: self.bias(queries, key_positions[:, :key_len], **extra),
        )


@register("alibi")
class ALiBi(BiasEncoding):
    """ALiBi (Press et al. 2022): bias ``-slope_h * (i - j)``, with a learnable per-head slope multiplier.

    Options:
        learnable_slopes: train the per-head multiplier (initialised to 1, so the start is the paper's ALiBi).
    """

    float32_buffers: ClassVar[tuple[str, ...]] = ("slopes",)

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        learnable_slopes: bool = True,
    ) -> None:
        super().__init__(shape)
        self.register_buffer("slopes", alibi_slopes(shape.num_heads))
        self.slope_scale = nn.Parameter(torch.ones(shape.num_heads), requires_grad=learnable_slopes)

    def distance_only(self) -> bool:
        return True

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(query_positions.device):
            slopes = (self.slopes * self.slope_scale.float()).view(1, -1, 1, 1)
            return -slopes * relative_distance(query_positions, key_positions)


@register("t5_relative")
class T5Relative(BiasEncoding):
    """T5's bucketed relative position bias (Raffel et al. 2020), for causal attention.

    One learned scalar per head and bucket of ``j - i`` (``t5_relative_bucket`` with ``bidirectional=False``:
    keys after the query are masked anyway). The table is an ``nn.Embedding(num_buckets, num_heads)``
    initialised normal with std 0.02, the model's initializer range (T5 itself uses std ``d_model ** -0.5``,
    which for small models starts with biases of several tenths). As in T5, one table serves every layer.

    Options:
        num_buckets: number of buckets (>= 2); half are exact distances 0 .. num_buckets // 2 - 1.
        max_distance: distances >= max_distance share the last bucket (> num_buckets // 2).
    """

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        num_buckets: int = 32,
        max_distance: int = 128,
    ) -> None:
        super().__init__(shape)
        require_int("num_buckets", num_buckets, minimum=2)
        if require_int("max_distance", max_distance) <= num_buckets // 2:
            raise ConfigError(
                f"max_distance must be > num_buckets // 2 = {num_buckets // 2}, got {max_distance!r}"
            )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, shape.num_heads)
        nn.init.normal_(self.relative_attention_bias.weight, std=0.02)

    def distance_only(self) -> bool:
        return True

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(query_positions.device):
            buckets = t5_relative_bucket(
                -integer_distance(query_positions, key_positions),
                bidirectional=False,
                num_buckets=self.num_buckets,
                max_distance=self.max_distance,
            )
            return per_head_lookup(self.relative_attention_bias.weight.float(), buckets)


@register("diet")
class DIET(BiasEncoding):
    """DIET, decoupled positional attention (Chen et al. 2021, arXiv 2104.08698): a per-head logit bias
    computed from positions alone, never mixed into the token embeddings.

    Variants:
        ``"abs"`` (DIET-ABS): ``b_h(i, j) = (P_i W^Q_h) . (P_j W^K_h) / sqrt(rank)``. The paper learns the
            position embeddings ``P`` of a fixed-length table; here ``P`` is the fixed sinusoidal table of
            ``hidden_size`` features (``sinusoidal_table``), defined at every position, and the learned per-head
            low-rank factors ``W^Q_h, W^K_h`` (hidden_size x rank, init normal std 0.02) make the bias, so any
            length up to 8x max_position and beyond works. Factors start non-zero: two zero factors would
            never receive a gradient.
        ``"rel"`` (DIET-REL): ``b_h(i, j) = r_h[clip(j - i, -K, K)]``, one learned scalar per head and clipped
            relative distance (Shaw et al. 2018 style, no log-binning), initialised to 0 (the start is NoPE).
            The table covers both signs; causal attention only trains the ``j <= i`` half.

    The paper gives every layer its own positional attention; here one set serves all layers (the attention
    path builds the bias once per forward), as T5 shares its relative bias.

    Options:
        variant: ``"abs"`` or ``"rel"``.
        rank: projection dim of the abs variant (None: head_dim).
        max_relative_distance: ``K`` of the rel variant.
    """

    VARIANTS: ClassVar[tuple[str, ...]] = ("abs", "rel")

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        variant: str = "abs",
        rank: int | None = None,
        max_relative_distance: int = 128,
    ) -> None:
        super().__init__(shape)
        if variant not in self.VARIANTS:
            raise ConfigError(f"variant must be one of {self.VARIANTS}, got {variant!r}")
        self.variant = variant
        if variant == "abs":
            self.rank = shape.head_dim if rank is None else require_int("rank", rank)
            factor_shape = (shape.num_heads, shape.hidden_size, self.rank)
            self.query_weight = nn.Parameter(torch.randn(factor_shape) * 0.02)
            self.key_weight = nn.Parameter(torch.randn(factor_shape) * 0.02)
        else:
            self.max_relative_distance = require_int("max_relative_distance", max_relative_distance)
            self.relative_bias = nn.Parameter(torch.zeros(2 * max_relative_distance + 1, shape.num_heads))

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(query_positions.device):
            if self.variant == "abs":
                return low_rank_position_bias(
                    sinusoidal_table(query_positions, self.shape.hidden_size),
                    sinusoidal_table(key_positions, self.shape.hidden_size),
                    self.query_weight.float(),
                    self.key_weight.float(),
                )
            limit = self.max_relative_distance
            index = (-integer_distance(query_positions, key_positions)).clamp(-limit, limit) + limit
            return per_head_lookup(self.relative_bias.float(), index)

    def distance_only(self) -> bool:
        return self.variant == "rel"

    def bias_blocks(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> BiasBlocks:
        """DIET-ABS projects the key features once per forward; each block projects only its queries."""
        if self.variant != "abs":
            return super().bias_blocks(query_positions, key_positions, **extra)
        with float32_compute(query_positions.device):
            key_features = sinusoidal_table(key_positions, self.shape.hidden_size)
            keys = torch.einsum("bkd,hdr->bhkr", key_features, self.key_weight.float())

        def make(inputs: tuple[torch.Tensor, ...], queries: torch.Tensor, key_len: int) -> torch.Tensor:
            query_weight, keys = inputs[0], inputs[1][:, :, :key_len]
            with float32_compute(queries.device):
                query_features = sinusoidal_table(queries, self.shape.hidden_size)
                projected = torch.einsum("bqd,hdr->bhqr", query_features, query_weight.float())
                return projected @ keys.transpose(-1, -2) / math.sqrt(self.rank)

        return BiasBlocks((self.query_weight, keys), make)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant}"


@register("fire")
class FIRE(BiasEncoding):
    """FIRE (Li et al. 2023, arXiv 2310.04418): ``b(i, j) = f_theta(psi(i - j) / psi(max(i, L)))``.

    ``psi(x) = log(|c x| + 1)`` amplifies local differences; dividing by ``psi`` of the query position
    (progressive interpolation) maps every distance into [0, 1], so longer contexts reuse the trained input
    range; ``L`` keeps short contexts from being stretched. ``f_theta`` is an MLP 1 -> mlp_width -> num_heads
    with ReLU (one output per head), with PyTorch's default ``nn.Linear`` init, as the paper's reference code.
    As there, ``c`` is learned (init ``init_c``) and ``L = |m| * init_L`` with a learned multiplier ``m``
    initialised to 1.

    The bias depends on absolute query positions: batched positions (batch, q) give (batch, heads, q, k).

    Options:
        mlp_width: hidden width of ``f_theta``.
        init_c: initial ``c`` (paper: 0.1).
        init_L: initial threshold ``L`` (paper: 512).
    """

    #: Added to the normaliser so the division stays finite (the paper's code uses the same value).
    eps: ClassVar[float] = 1e-6

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        mlp_width: int = 32,
        init_c: float = 0.1,
        init_L: float = 512.0,
    ) -> None:
        super().__init__(shape)
        if not init_c > 0:
            raise ConfigError(f"init_c must be > 0, got {init_c!r}")
        if not init_L > 0:
            raise ConfigError(f"init_L must be > 0, got {init_L!r}")
        self.mlp_in = nn.Linear(1, require_int("mlp_width", mlp_width))
        self.mlp_out = nn.Linear(mlp_width, shape.num_heads)
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.init_L = float(init_L)
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))

    def threshold(self) -> torch.Tensor:
        """The current threshold ``L = |m| * init_L`` (float32 scalar)."""
        return self.L_multiplier.float().abs() * self.init_L

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(query_positions.device):
            distance = fire_interpolated_distance(
                query_positions, key_positions, self.c.float(), self.threshold(), self.eps
            )
            hidden = F.relu(
                F.linear(distance[:, 0, :, :, None], self.mlp_in.weight.float(), self.mlp_in.bias.float())
            )
            output = F.linear(hidden, self.mlp_out.weight.float(), self.mlp_out.bias.float())
            return output.permute(0, 3, 1, 2)


@register("kerple")
class KERPLE(BiasEncoding):
    """KERPLE, logarithmic variant (Chi et al. 2022): bias ``-r1_h * log(1 + r2_h * |i - j|)``.

    ``r1, r2 > 0`` per head are ``softplus`` of free parameters (the paper's code clamps them at 0.01 instead;
    softplus keeps a gradient everywhere). Initial values follow the paper's code: ``r1 ~ U(0, 2)``,
    ``r2 ~ U(0, 1)``, raised to at least 0.01.
    """

    #: Smallest initial value of r1 and r2 (the paper's clamp).
    min_init: ClassVar[float] = 0.01

    def __init__(self, shape: PEShape, /) -> None:
        super().__init__(shape)
        self.raw_r1 = nn.Parameter(
            inverse_softplus((2 * torch.rand(shape.num_heads)).clamp(min=self.min_init))
        )
        self.raw_r2 = nn.Parameter(inverse_softplus(torch.rand(shape.num_heads).clamp(min=self.min_init)))

    def rates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positive per-head ``(r1, r2)``, each (heads,) float32."""
        return F.softplus(self.raw_r1.float()), F.softplus(self.raw_r2.float())

    def distance_only(self) -> bool:
        return True

    def bias(
        self, query_positions: torch.Tensor, key_positions: torch.Tensor, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(query_positions.device):
            return kerple_log_bias(relative_distance(query_positions, key_positions), *self.rates())
