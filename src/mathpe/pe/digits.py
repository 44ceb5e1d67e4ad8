"""Digit runs: where each token sits inside its number, computed causally so cached decoding stays exact.

``abacus`` and ``math_rope`` index digits by their place within the number they belong to. A causal model
cannot know how many digits will follow the one it is generating, so the place is counted from the first
digit of the run: in the reversed format (least significant digit first, Lee et al. 2023) that is exactly
the place value, and in the plain format it aligns digits from the left, as Abacus does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def digit_lookup(vocab_size: int, digit_token_ids: Iterable[int]) -> torch.Tensor:
    """(vocab_size,) bool table, True at the ids of digit tokens (for ``is_digit = table[input_ids]``)."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    ids = list(digit_token_ids)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"digit_token_ids {bad} are outside the vocabulary 0..{vocab_size - 1}")
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
