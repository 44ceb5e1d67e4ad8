"""Digit runs: where each token sits inside its number, computed causally so cached decoding stays exact.

``abacus`` and ``math_rope`` index digits by their place within the number they belong to. A causal model
cannot know how many digits will follow the one it is generating, so the place is counted from the first
digit of the run: in the reversed format (least significant digit first, Lee et al. 2023) that is exactly
the place value, and in the plain format it aligns digits from the left, as Abacus does.

Index hints (``--index_hints``: ``a3b2c1``, a letter before every digit) sit inside a number: given as
``hint_token_ids`` they keep its run open and count no place, so each digit keeps the place it has without
hints, and a hint has the place of the digit before it (0 for the first).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mathpe.errors import ConfigError


def digit_lookup(vocab_size: int, digit_token_ids: Iterable[int]) -> torch.Tensor:
    """(vocab_size,) bool table, True at the ids of digit tokens (for ``is_digit = table[input_ids]``)."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    ids = list(digit_token_ids)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"digit_token_ids {bad} are outside the vocabulary 0..{vocab_size - 1}")
    table[ids] = True
    return table


def digit_run_lengths(
    is_digit: torch.Tensor, carry: torch.Tensor | None = None, in_number: torch.Tensor | None = None
) -> torch.Tensor:
    """Digits so far in the number at each token: 1 at a number's first digit, 2 at its second, ...

    Args:
        is_digit: (batch, seq) bool, True where the token is a digit.
        carry: (batch,) digits of the number still open before this chunk (cached decoding), or None for 0.
        in_number: (batch, seq) bool, True at the tokens a number is made of: its digits and any index hints
            (None: the digits alone). A token outside numbers ends the run.

    Returns:
        (batch, seq) long; 0 outside numbers. Its last column is the carry for the next chunk.
    """
    batch, seq = is_digit.shape
    if in_number is None:
        in_number = is_digit
    index = torch.arange(seq, device=is_digit.device).expand(batch, seq)
    digits_so_far = is_digit.long().cumsum(dim=1)
    # The last token outside a number at or before each token (-1: none in this chunk).
    last_break = torch.where(in_number, -1, index).cummax(dim=1).values
    # Digits before the run: counted up to its break, or minus the carried digits of a run still open.
    open_run = 0 if carry is None else -carry.to(is_digit.device).long().unsqueeze(1)
    before_run = torch.where(last_break >= 0, digits_so_far.gather(1, last_break.clamp(min=0)), open_run)
    return digits_so_far - before_run


def is_digit_token(input_ids: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """(batch, seq) ids -> (batch, seq) bool via a ``digit_lookup`` table; ids past the table are not digits."""
    size = lookup.shape[0]
    return (input_ids < size) & lookup[input_ids.clamp(max=size - 1)]


class DigitRunsMixin:
    """For PEs indexed by digit place (``abacus``, ``math_rope``, ``position_coupling*``): the
    ``digit_token_ids`` and ``hint_token_ids`` options, and a ``prepare`` that passes ``digit_runs``
    (batch, seq) to the PE and carries the open run across cached steps.

    Call ``init_digit_runs(digit_token_ids, hint_token_ids)`` in ``__init__``. Without token ids (``inputs_embeds`` only) or
    without ``digit_token_ids`` there are no digits: every run length is 0.
    """

    uses_token_ids = True

    def init_digit_runs(
        self, digit_token_ids: list[int] | None, hint_token_ids: list[int] | None = None
    ) -> None:
        ids = sorted(set(digit_token_ids or []))
        self.digit_token_ids = ids
        vocab = (max(ids) + 1) if ids else 1
        self.register_buffer("digit_table", digit_lookup(vocab, ids))
        self.hint_token_ids = sorted(set(hint_token_ids or []))
        overlap = sorted(set(self.hint_token_ids) & set(ids))
        if overlap:
            raise ConfigError(
                f"hint_token_ids {overlap} are digit_token_ids too; a token is one or the other"
            )
        if self.hint_token_ids:  # only then, so models saved before hints existed load as they were
            numbers = ids + self.hint_token_ids
            self.register_buffer("number_table", digit_lookup(max(numbers) + 1, numbers))

    def prepare(
        self,
        *,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        state: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if input_ids is None:
            batch, seq = inputs_embeds.shape[:2]
            is_digit = torch.zeros(batch, seq, dtype=torch.bool, device=inputs_embeds.device)
            in_number = is_digit
        else:
            is_digit = is_digit_token(input_ids, self.digit_table)
            in_number = is_digit_token(input_ids, self.number_table) if self.hint_token_ids else is_digit
        if attention_mask is not None:
            is_digit = is_digit & attention_mask.bool()
            in_number = in_number & attention_mask.bool()
        runs = digit_run_lengths(is_digit, state, in_number)
        return {"digit_runs": runs}, runs[:, -1]

    def token_states(self, extra: dict[str, torch.Tensor], state: torch.Tensor | None) -> torch.Tensor | None:
        """(batch, seq): the carried run length after each token is that token's run length."""
        return None if state is None else extra["digit_runs"]
