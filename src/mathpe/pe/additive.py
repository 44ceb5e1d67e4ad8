"""Additive PEs: a (batch, seq, hidden) vector added to the token embeddings before the first layer."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from mathpe.errors import ConfigError
from mathpe.pe.base import PEShape, PositionalEncoding, float32_compute, require_int
from mathpe.pe.digits import DigitRunsMixin
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
    """Fixed sinusoidal absolute encoding (Vaswani et al. 2017), times a learnable scale.

    The scale starts at ``init_scale``, the token embeddings' init std (0.02 in mathpe's decoder and GPT-2
    style models), so position and content enter in the ratio Vaswani et al. have: their token embeddings
    reach std 1 (init std d^-1/2, times sqrt(d)) beside table entries of RMS 1/sqrt(2). A scale of 1 beside
    std-0.02 embeddings drowns the tokens 35 to 1 and tiny models do not learn arithmetic at all.
    """

    def __init__(self, shape: PEShape, /, *, init_scale: float = 0.02) -> None:
        super().__init__(shape)
        if isinstance(init_scale, bool) or not isinstance(init_scale, int | float) or not init_scale > 0:
            raise ConfigError(f"init_scale must be a number > 0, got {init_scale!r}")
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def embed(
        self, position_ids: torch.Tensor, input_ids: torch.Tensor | None = None, **extra: torch.Tensor
    ) -> torch.Tensor:
        with float32_compute(position_ids.device):
            return sinusoidal_table(position_ids, self.shape.hidden_size) * self.scale.float()


@register("learned")
class Learned(AdditiveEncoding):
    """Learned absolute position embeddings (GPT-2 style): ``nn.Embedding(max_position, hidden)``, std 0.02.

    The table ends at ``max_position``: later positions raise a ``ConfigError`` (no length generalisation).
    """

    @classmethod
    def position_limit(cls, max_position: int) -> int:
        return max_position

    def __init__(self, shape: PEShape, /) -> None:
        super().__init__(shape)
        self.table = nn.Embedding(shape.max_position, shape.hidden_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def embed(
        self, position_ids: torch.Tensor, input_ids: torch.Tensor | None = None, **extra: torch.Tensor
    ) -> torch.Tensor:
        self.check_positions(position_ids)
        return self.table(position_ids).float()


def abacus_indices(digit_runs: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Abacus table rows: each token's place in its number plus its sequence's offset (place 0: not a digit).

    Args:
        digit_runs: (batch, seq) long, 1 for a number's first digit, 2 for its second, ..., 0 elsewhere.
        offset: (batch, seq) long offset of each token (one value per sequence; 0 in eval).

    Returns:
        (batch, seq) long.
    """
    return digit_runs + offset


class DigitPlaceTable(DigitRunsMixin, AdditiveEncoding):
    """Base of the learned tables indexed by digit place plus a per-sequence variant (``abacus``'s offset,
    ``position_coupling``'s start): random over the ``eval_variants`` in training, the eval option in eval.

    A subclass declares its options in ``__init__`` (``eval_variant_option`` and ``eval_variant_limit_option``
    name two of them), calls ``init_place_table`` and turns digit runs and variants into its ``embed``
    inputs in ``place_inputs``. ``prepare`` draws the variant at a sequence's first forward and carries it,
    with the open digit run, under ``variant_state_key`` for the rest of a cached generation.
    """

    variant_state_key: ClassVar[str]

    def init_place_table(
        self,
        digit_token_ids: list[int] | None,
        hint_token_ids: list[int] | None,
        max_digits: int,
        max_variant: int,
    ) -> None:
        """Digit lookup, ``max_digits`` and the ``max_digits + max_variant + 1``-row table, init normal std 0.02."""
        self.init_digit_runs(digit_token_ids, hint_token_ids)
        self.max_digits = require_int("max_digits", max_digits)
        limit = self.eval_variant_limit_option
        setattr(self, limit, require_int(limit, max_variant, minimum=0))
        self.table = nn.Embedding(max_digits + max_variant + 1, self.shape.hidden_size)
        nn.init.normal_(self.table.weight, std=0.02)

    def place_inputs(self, digit_runs: torch.Tensor, variants: torch.Tensor) -> dict[str, torch.Tensor]:
        """(batch, seq) digit runs and (batch,) variants -> the keyword inputs of ``embed``."""
        raise NotImplementedError

    def prepare(
        self,
        *,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``place_inputs`` (each (batch, seq)); the state carries the open digit run and the variant."""
        extra, runs_carry = super().prepare(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            state=None if state is None else state["runs"],
        )
        key = self.variant_state_key
        variants = self.sequence_variants(runs_carry) if state is None else state[key]
        return self.place_inputs(extra["digit_runs"], variants), {"runs": runs_carry, key: variants}

    def token_states(
        self, extra: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Run length and variant after each token, both (batch, seq)."""
        runs = extra["digit_runs"]
        key = self.variant_state_key
        return {"runs": runs, key: state[key].unsqueeze(1).expand_as(runs)}


@register("abacus")
class Abacus(DigitPlaceTable):
    """Abacus embeddings (McLeish et al. 2024, "Transformers Can Do Arithmetic with the Right Embeddings").

    Every digit gets a learned embedding of its place within its number (1 for the first digit, 2 for the
    second, ...; ``DigitRunsMixin`` counts it causally, so cached decoding is exact); other tokens have
    place 0. With reversed numbers (least significant digit first) the place is the place value, so digits
    of equal significance in the operands and the answer share an embedding. Design choices against the
    reference code (github.com/mcleish7/arithmetic, ``abacus.py``):

    - Random offset (the paper's k): in training mode each sequence draws one offset in
      [0, max_offset] added to the indices of all its tokens, so the whole table gets trained and longer
      numbers than seen in training still find trained rows. The reference draws one offset per batch; one
      per sequence gives more variety at no cost. The offset is drawn in ``prepare`` and carried in the
      cached-decoding state, so it is constant within a sequence. In eval mode the offset is 0, so
      generation is deterministic (``eval_offset`` chooses another fixed offset).
    - Non-digits: place 0, shifted by the offset like the digits (row ``offset``). The reference adds the
      unshifted row 0 to them, so with random offsets the token that must write an answer's first digit
      (``=``, not a digit) cannot tell which rows its sequence's units digits have, and the units digit of
      the answer is the one it gets wrong. Shifted, ``=`` carries the offset and can address the units rows
      as every later answer digit addresses its own.
    - Table: ``max_digits + max_offset + 1`` rows, init normal std 0.02. A number longer than ``max_digits``
      raises a ``ConfigError``.

    Options:
        digit_token_ids: ids of the ten digit tokens (None: no token is a digit; every token gets row offset).
        hint_token_ids: ids of index-hint tokens (``--index_hints``), which stay inside a number (``mathpe.pe.digits``).
        max_digits: longest number (in digits) the table supports.
        max_offset: largest random training offset (the paper trains with k = 100).
        eval_offset: the offset in eval mode, 0..max_offset (0, as in the paper). Past the training length,
            accuracy depends strongly on it (the rows a long number lands on were trained with different
            neighbours), which ``mathpe.eval.evaluate`` exploits by voting over several (``--eval_offsets``):
            the eval offsets are this PE's ``eval_variants``.
    """

    eval_variant_option: ClassVar[str] = "eval_offset"
    eval_variant_limit_option: ClassVar[str] = "max_offset"
    variant_state_key: ClassVar[str] = "offset"

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        digit_token_ids: list[int] | None = None,
        hint_token_ids: list[int] | None = None,
        max_digits: int = 64,
        max_offset: int = 100,
        eval_offset: int = 0,
    ) -> None:
        super().__init__(shape)
        self.init_place_table(digit_token_ids, hint_token_ids, max_digits, max_offset)
        self.eval_offset = eval_offset

    @property
    def eval_offset(self) -> int:
        return self._eval_offset

    @eval_offset.setter
    def eval_offset(self, value: int) -> None:
        self._eval_offset = self.check_eval_variant(value)

    def place_inputs(self, digit_runs: torch.Tensor, variants: torch.Tensor) -> dict[str, torch.Tensor]:
        """``digit_runs`` and ``digit_offset`` (the sequence's offset at every token), both (batch, seq)."""
        return {"digit_runs": digit_runs, "digit_offset": variants[:, None].expand_as(digit_runs)}

    def embed(
        self,
        position_ids: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        digit_runs: torch.Tensor | None = None,
        digit_offset: torch.Tensor | None = None,
        **extra: torch.Tensor,
    ) -> torch.Tensor:
        """(batch, seq) -> (batch, seq, hidden); ``digit_runs`` / ``digit_offset`` come from ``prepare``.

        Without ``digit_runs`` no token is a digit (as ``prepare`` without token ids), without
        ``digit_offset`` the offset is 0.
        """
        if digit_runs is None:
            digit_runs = torch.zeros_like(position_ids)
        if digit_offset is None:
            digit_offset = torch.zeros_like(digit_runs)
        longest = int(digit_runs.max()) if digit_runs.numel() else 0
        if longest > self.max_digits:
            raise ConfigError(
                f"Abacus got a number of {longest} digits, but max_digits={self.max_digits}; raise max_digits"
            )
        return self.table(abacus_indices(digit_runs, digit_offset)).float()
