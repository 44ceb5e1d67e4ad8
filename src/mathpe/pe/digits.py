"""Digit runs: where each token sits inside its number, computed causally so cached decoding stays exact.

``abacus`` and ``math_rope`` index digits by their place within the number they belong to. A causal model
cannot know how many digits will follow the one it is generating, so the place is counted from the first
digit of the run: in the reversed format (least significant digit first, Lee et al. 2023) that is exactly
the place value, and in the plain format it aligns digits from the left, as Abacus does.
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


def digit_run_lengths(is_digit: torch.Tensor, carry: torch.Tensor | None = None) -> torch.Tensor:
    """Length of the digit run ending at each token: 1 for a number's first digit, 2 for its second, ...

    Args:
        is_digit: (batch, seq) bool, True where the token is a digit.
        carry: (batch,) run length at the last token before this chunk (cached decoding), or None for 0.

    Returns:
        (batch, seq) long; 0 at non-digit tokens. Its last column is the carry for the next chunk.
    """
    batch, seq = is_digit.shape
    index = torch.arange(seq, device=is_digit.device).expand(batch, seq)
    start = -1 if carry is None else -1 - carry.to(is_digit.device).long().unsqueeze(1)
    marker = torch.where(is_digit, torch.as_tensor(start, device=is_digit.device).expand(batch, seq), index)
    last_non_digit = marker.cummax(dim=1).values
    return index - last_non_digit


def is_digit_token(input_ids: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """(batch, seq) ids -> (batch, seq) bool via a ``digit_lookup`` table; ids past the table are not digits."""
    size = lookup.shape[0]
    return (input_ids < size) & lookup[input_ids.clamp(max=size - 1)]


class DigitRunsMixin:
    """For PEs indexed by digit place (``abacus``, ``math_rope``): the ``digit_token_ids`` option, and a
    ``prepare`` that passes ``digit_runs`` (batch, seq) to the PE and carries the open run across cached steps.

    Call ``init_digit_runs(digit_token_ids)`` in ``__init__``. Without token ids (``inputs_embeds`` only) or
    without ``digit_token_ids`` there are no digits: every run length is 0.
    """

    uses_token_ids = True

    def init_digit_runs(self, digit_token_ids: list[int] | None) -> None:
        ids = sorted(set(digit_token_ids or []))
        self.digit_token_ids = ids
        vocab = (max(ids) + 1) if ids else 1
        self.register_buffer("digit_table", digit_lookup(vocab, ids))

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
        else:
            is_digit = is_digit_token(input_ids, self.digit_table)
        if attention_mask is not None:
            is_digit = is_digit & attention_mask.bool()
        runs = digit_run_lengths(is_digit, state)
        return {"digit_runs": runs}, runs[:, -1]

    def token_states(self, extra: dict[str, torch.Tensor], state: torch.Tensor | None) -> torch.Tensor | None:
        """(batch, seq): the carried run length after each token is that token's run length."""
        return None if state is None else extra["digit_runs"]
