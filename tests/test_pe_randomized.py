"""Randomized positions (Ruoss et al. 2023): sorted, in range, uniform over subsets, seeded."""

from __future__ import annotations

import pytest
import torch

from mathpe.attention import positions_from_mask
from mathpe.pe.randomized import randomized_positions


def test_positions_are_sorted_distinct_and_in_range():
    positions = torch.arange(12).expand(64, 12)
    out = randomized_positions(positions, 40, torch.Generator().manual_seed(0))
    assert out.shape == positions.shape and out.dtype == torch.long
    assert (out[:, 1:] > out[:, :-1]).all()
    assert out.min() >= 0 and out.max() < 40
    assert len({tuple(row) for row in out.tolist()}) == 64  # every row its own draw


def test_every_position_of_the_range_is_drawn():
    """Test-length positions appear in training: all of 0..max_train_position-1 occur over a few draws."""
    out = randomized_positions(torch.arange(8).expand(200, 8), 32, torch.Generator().manual_seed(1))
    assert set(out.flatten().tolist()) == set(range(32))


def test_a_seeded_generator_makes_the_draw_reproducible():
    positions = torch.arange(10).expand(4, 10)
    first = randomized_positions(positions, 50, torch.Generator().manual_seed(3))
    again = randomized_positions(positions, 50, torch.Generator().manual_seed(3))
    other = randomized_positions(positions, 50, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_full_range_is_the_identity_and_left_padding_keeps_the_real_tokens_order():
    """With max_train_position == n the only subset is 0..n-1 (the eval positions, arange)."""
    positions = torch.arange(9).expand(3, 9)
    assert torch.equal(randomized_positions(positions, 9), positions)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = randomized_positions(positions_from_mask(mask), 30, torch.Generator().manual_seed(0))
    assert out[0, 0] == out[0, 1] == out[0, 2]  # pads share the first real token's position
    assert (out[0, 3:] > out[0, 2:-1]).all() and (out[1, 1:] > out[1, :-1]).all()


def test_too_small_a_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"draw from 0..7 but the sequence has position 9; raise"):
        randomized_positions(torch.arange(10)[None], 8)
    with pytest.raises(ValueError, match=r"max_train_position must be an integer, got 2.5"):
        randomized_positions(torch.arange(2)[None], 2.5)
