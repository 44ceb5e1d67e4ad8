"""Randomized positions (Ruoss et al. 2023): sorted, in range, uniform over subsets, seeded."""

from __future__ import annotations

import pytest
import torch

from mathpe.attention import positions_from_mask
from mathpe.errors import ConfigError
from mathpe.model import MathPEConfig, MathPEForCausalLM
from mathpe.pe.randomized import randomized_positions
from mathpe.train.config import RunConfig


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


def _decoder_pair(pe: str) -> tuple[MathPEForCausalLM, MathPEForCausalLM]:
    """The same weights without and with randomized positions (bound 64, context 32)."""
    shape = {"pe": pe, "vocab_size": 16, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "max_position_embeddings": 32}  # fmt: skip
    plain = MathPEForCausalLM(MathPEConfig(**shape))
    randomized = MathPEForCausalLM(MathPEConfig(**shape, randomized_positions=64))
    randomized.load_state_dict(plain.state_dict())
    return plain, randomized


@pytest.mark.parametrize("pe", ["rope", "alibi", "sinusoidal"])
def test_the_decoder_trains_on_randomized_positions_and_evaluates_on_plain_ones(pe: str) -> None:
    plain, randomized = _decoder_pair(pe)
    ids = torch.randint(0, 16, (2, 12))
    plain.eval(), randomized.eval()
    torch.testing.assert_close(randomized(ids).logits, plain(ids).logits, rtol=0, atol=0)
    plain.train(), randomized.train()
    first, second = randomized(ids).logits, randomized(ids).logits  # a new draw every training forward
    assert not torch.allclose(first, second) and not torch.allclose(first, plain(ids).logits)


def test_randomized_positions_need_the_decoder_and_a_large_enough_bound() -> None:
    with pytest.raises(ConfigError, match="--randomized_positions needs mathpe's decoder"):
        RunConfig(model_size="EleutherAI/pythia-70m", randomized_positions=64).validate()
    with pytest.raises(ConfigError, match="--randomized_positions must be a positive integer, got 0"):
        RunConfig(randomized_positions=0).validate()
    _, randomized = _decoder_pair("rope")
    with pytest.raises(ConfigError, match=r"draw from 0\.\.63 but the sequence has position 69"):
        randomized.train()(torch.randint(0, 16, (1, 70)))
