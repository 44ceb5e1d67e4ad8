"""Position coupling (Cho et al. 2024, "Position Coupling: Improving Length Generalization of Arithmetic
Transformers Using Task Structure", arXiv 2405.20671; code github.com/HanseulJo/position-coupling).

Digits of equal significance in the operands and the answer share one position id; the ids replace the
token's place in the sequence. The reference writes operands most significant digit first and the answer
reversed, and gives a digit of significance ``s`` the id ``e - 1 - s`` and every operator (``+``, ``=``)
the id ``e`` (``e`` one past the units digit's id, from a random start in training). mathpe's ``reversed``
format writes operands reversed too, so the same coupling is the mirror image and is counted causally
from each number's first digit (``DigitRunsMixin``):

- a digit of significance ``s`` (the ``s + 1``-th digit of its run) gets id ``start + 1 + s``;
- every other token (operators, ``=``, EOS, padding) gets id ``start``, as the reference's operators do.
  The reference gives BOS/EOS id 0 instead; here no token needs a special case, so no list of special
  token ids is needed and the ``=`` that writes the answer's units digit carries the start like the
  operators.

In the ``plain`` format the run is counted from the left, so the ids align digits from the left (as
``abacus`` does), not by significance; use ``--format reversed`` for coupling.

Two registry entries, one per embedding the ids feed (one results row each):

- ``position_coupling``: a learned table of ids added to the token embeddings (the paper's setting).
  In training each sequence draws its start uniformly in ``0..max_start`` so every id up to
  ``max_start + longest training number + 1`` gets trained; eval uses the fixed ``eval_start``. With the
  reversed format these ids equal ``abacus``'s indices (McLeish et al. found the same alignment); the two
  differ in option names and defaults only, and the method is registered under the name users look for.
- ``position_coupling_rope``: the coupled ids as RoPE positions. RoPE depends on id differences only, so
  a random start would change nothing: this variant has none.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from mathpe.errors import ConfigError
from mathpe.pe.additive import DigitPlaceTable
from mathpe.pe.base import PEShape
from mathpe.pe.digits import DigitRunsMixin
from mathpe.pe.registry import register
from mathpe.pe.rotary import RotaryEncoding, rope_inverse_frequencies, rotary_angles


def coupled_position_ids(digit_runs: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Coupled ids: ``start + digit_runs`` (digit of significance s -> start + 1 + s, other tokens -> start).

    Args:
        digit_runs: (batch, seq) long, 1 for a number's first digit, 2 for its second, ..., 0 elsewhere.
        start: the start id, an int or a (batch,) long tensor (one start per sequence).

    Returns:
        (batch, seq) long.
    """
    if isinstance(start, torch.Tensor):
        start = start.to(digit_runs.device).unsqueeze(-1)
    return digit_runs + start


@register("position_coupling")
class PositionCoupling(DigitPlaceTable):
    """Position coupling over learned absolute embeddings (design in the module docstring).

    Options:
        digit_token_ids: ids of the ten digit tokens (None: no token is a digit; every token gets ``start``).
        hint_token_ids: ids of index-hint tokens (``--index_hints``), which stay inside a number (``mathpe.pe.digits``).
        max_digits: longest number (in digits) the table supports; longer ones raise a ``ConfigError``.
        max_start: largest random start in training. Choose it so that ``max_start`` plus the longest
            training answer covers the longest test answer: every id below that is then trained.
        eval_start: the start in eval mode, 0..max_start; the starts are this PE's ``eval_variants``, so
            evaluation can vote over several (``--eval_offsets``) as for ``abacus``.
    """

    eval_variant_option: ClassVar[str] = "eval_start"
    eval_variant_limit_option: ClassVar[str] = "max_start"
    variant_state_key: ClassVar[str] = "start"

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        digit_token_ids: list[int] | None = None,
        hint_token_ids: list[int] | None = None,
        max_digits: int = 64,
        max_start: int = 64,
        eval_start: int = 0,
    ) -> None:
        super().__init__(shape)
        self.init_place_table(digit_token_ids, hint_token_ids, max_digits, max_start)
        self.eval_start = self.check_eval_variant(eval_start)

    def place_inputs(self, digit_runs: torch.Tensor, variants: torch.Tensor) -> dict[str, torch.Tensor]:
        """``digit_runs`` and ``coupled_position_ids`` (batch, seq); the start is the sequence's variant."""
        return {"digit_runs": digit_runs, "coupled_position_ids": coupled_position_ids(digit_runs, variants)}

    def embed(
        self,
        position_ids: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        coupled_position_ids: torch.Tensor | None = None,
        **extra: torch.Tensor,
    ) -> torch.Tensor:
        """(batch, seq) -> (batch, seq, hidden). ``position_ids`` are not used: the coupled ids replace them.

        Without ``coupled_position_ids`` (no ``prepare``) no token is a digit: every token gets ``eval_start``.
        """
        if coupled_position_ids is None:
            coupled_position_ids = torch.full_like(position_ids, self.eval_start)
        largest = int(coupled_position_ids.max()) if coupled_position_ids.numel() else 0
        if largest >= self.table.num_embeddings:
            raise ConfigError(
                f"position_coupling got id {largest}, past its table of {self.table.num_embeddings} "
                f"(max_start={self.max_start} + max_digits={self.max_digits} + 1); raise max_digits"
            )
        return self.table(coupled_position_ids).float()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_start={self.max_start}, max_digits={self.max_digits}"


@register("position_coupling_rope")
class PositionCouplingRoPE(DigitRunsMixin, RotaryEncoding):
    """Position coupling with the coupled ids (start 0) as RoPE positions (design in the module docstring).

    Options:
        base: frequency base.
        rotary_fraction: fraction of each head's dims that rotate.
        digit_token_ids: ids of the ten digit tokens (None: no token is a digit; every id is 0, i.e. NoPE).
        hint_token_ids: ids of index-hint tokens (``--index_hints``), which stay inside a number (``mathpe.pe.digits``).
    """

    def __init__(
        self,
        shape: PEShape,
        /,
        *,
        base: float = 10000.0,
        rotary_fraction: float = 1.0,
        digit_token_ids: list[int] | None = None,
        hint_token_ids: list[int] | None = None,
    ) -> None:
        super().__init__(shape, base=base, rotary_fraction=rotary_fraction)
        self.init_digit_runs(digit_token_ids, hint_token_ids)
        self.register_buffer("inv_freq", rope_inverse_frequencies(self.rotary_dim, self.base))

    def angles(self, position_ids: torch.Tensor, digit_runs: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq) -> (batch, seq, rotary_dim // 2) float32 angles of the coupled ids.

        ``position_ids`` are not used; without ``digit_runs`` (no ``prepare``) every id is 0.
        """
        if digit_runs is None:
            digit_runs = torch.zeros_like(position_ids)
        return rotary_angles(coupled_position_ids(digit_runs), self.inv_freq)
