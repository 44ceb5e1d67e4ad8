"""Additive PEs (sinusoidal, learned, abacus) against reference formulas, and cached decoding."""

from __future__ import annotations

import math

import pytest
import torch

from mathpe.model.configuration import preset_config
from mathpe.model.modeling import MathPEForCausalLM
from mathpe.pe import PEShape, build_pe
from mathpe.pe.additive import abacus_indices, sinusoidal_table
from mathpe.pe.base import require_int

HEADS, HEAD_DIM, HIDDEN, MAX_POSITION = 4, 16, 64, 64
#: Token ids 3..12 are the digits 0..9 in these tests; everything else is an operator or padding.
DIGITS = list(range(3, 13))


def build(name: str, **options: object) -> torch.nn.Module:
    return build_pe(name, PEShape(HEADS, HEAD_DIM, HIDDEN, MAX_POSITION), **options)


def test_require_int() -> None:
    assert require_int("x", 3) == 3
    assert require_int("x", 0, minimum=0) == 0
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="x must be an integer >= 1"):
            require_int("x", bad)


def test_sinusoidal_table_matches_vaswani() -> None:
    positions = [0, 1, 7, 511]
    table = sinusoidal_table(torch.tensor(positions), 10)
    for row, pos in enumerate(positions):
        for i in range(0, 10, 2):
            angle = pos / 10000 ** (i / 10)
            assert table[row, i].item() == pytest.approx(math.sin(angle), abs=1e-4)
            assert table[row, i + 1].item() == pytest.approx(math.cos(angle), abs=1e-4)


def test_sinusoidal_starts_at_the_token_embeddings_scale() -> None:
    """The table times ``init_scale`` (default 0.02): entries of RMS 0.02 / sqrt(2), beside std-0.02 tokens."""
    positions = torch.arange(MAX_POSITION)[None]
    table = sinusoidal_table(positions, HIDDEN)
    torch.testing.assert_close(build("sinusoidal").embed(positions), table * 0.02)
    torch.testing.assert_close(build("sinusoidal", init_scale=1.5).embed(positions), table * 1.5)
    rms = build("sinusoidal").embed(positions).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.02 / math.sqrt(2), rel=0.01)
    for bad in (0, -0.1, True, "1"):
        with pytest.raises(ValueError, match=rf"init_scale must be a number > 0, got {bad!r}"):
            build("sinusoidal", init_scale=bad)


# --- learned --------------------------------------------------------------------------------------------------


def test_learned_looks_up_its_table() -> None:
    pe = build("learned")
    assert pe.max_supported_position == MAX_POSITION
    assert pe.table.weight.std().item() == pytest.approx(0.02, rel=0.2)
    positions = torch.tensor([[5, 0, 63], [1, 1, 2]])
    embedding = pe.embed(positions)
    assert embedding.shape == (2, 3, HIDDEN) and embedding.dtype == torch.float32
    torch.testing.assert_close(embedding, pe.table.weight[positions])


def test_learned_raises_past_its_table() -> None:
    pe = build("learned")
    pe.embed(torch.tensor([[MAX_POSITION - 1]]))
    with pytest.raises(ValueError, match=rf"positions 0\.\.{MAX_POSITION - 1}, got position {MAX_POSITION}"):
        pe.embed(torch.tensor([[3, MAX_POSITION]]))
    model = MathPEForCausalLM(preset_config("tiny", pe="learned", vocab_size=20, max_position_embeddings=16))
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="got position 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_learned_half_computes_in_float32() -> None:
    pe = build("learned")
    reference = pe.embed(torch.tensor([[0, 9]]))
    half = pe.half().embed(torch.tensor([[0, 9]]))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, rtol=1e-3, atol=1e-4)


# --- abacus ---------------------------------------------------------------------------------------------------


def reference_places(row: list[int], digits: list[int]) -> list[int]:
    """The place of each token within its number, counted from 1 (McLeish et al.'s helper), 0 for non-digits."""
    places, run = [], 0
    for token in row:
        run = run + 1 if token in digits else 0
        places.append(run)
    return places


def tokens(seed: int, batch: int = 3, seq: int = 24) -> torch.Tensor:
    """Random sequences mixing numbers of 1..6 digits with operator tokens (0, 1, 2, 13)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 13, (batch, seq), generator=generator)
    breaks = torch.rand(batch, seq, generator=generator) < 0.3
    others = torch.tensor([0, 1, 2, 13])[torch.randint(0, 4, (batch, seq), generator=generator)]
    return torch.where(breaks, others, ids)


def prepare(pe: torch.nn.Module, ids: torch.Tensor, state: object = None) -> tuple[dict, object]:
    return pe.prepare(input_ids=ids, inputs_embeds=None, attention_mask=None, state=state)


def test_abacus_digits_get_their_place_in_the_number() -> None:
    pe = build("abacus", digit_token_ids=DIGITS).eval()
    ids = tokens(0)
    extra, _ = prepare(pe, ids)
    expected = torch.tensor([reference_places(row, DIGITS) for row in ids.tolist()])
    assert torch.equal(extra["digit_runs"], expected)
    assert torch.equal(extra["digit_offset"], torch.zeros(3, 24, dtype=torch.long))
    embedding = pe.embed(torch.arange(24).expand(3, 24), ids, **extra)
    torch.testing.assert_close(embedding, pe.table.weight[expected])
    assert (embedding[expected == 0] == pe.table.weight[0]).all()  # non-digits: place 0


def test_abacus_indices_shift_every_token_by_its_sequence_offset() -> None:
    runs = torch.tensor([[0, 1, 2, 0, 1], [1, 0, 0, 1, 2]])
    offset = torch.tensor([[10], [0]]).expand(2, 5)
    assert abacus_indices(runs, offset).tolist() == [[10, 11, 12, 10, 11], [1, 0, 0, 1, 2]]


@pytest.mark.parametrize("training", [False, True])
def test_abacus_cached_prepare_equals_full_sequence(training: bool) -> None:
    pe = build("abacus", digit_token_ids=DIGITS, max_offset=50).train(training)
    ids = tokens(1)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    torch.manual_seed(0)
    full_extra, _ = prepare(pe, ids)
    full = pe.embed(positions, ids, **full_extra)
    for split in range(1, ids.shape[1]):
        torch.manual_seed(0)  # the same offset draw as the full forward
        first, state = prepare(pe, ids[:, :split])
        second, _ = prepare(pe, ids[:, split:], state)
        for key in ("digit_runs", "digit_offset"):
            assert torch.equal(torch.cat([first[key], second[key]], 1), full_extra[key])
        chunks = torch.cat(
            [pe.embed(positions[:, :split], **first), pe.embed(positions[:, split:], **second)], 1
        )
        torch.testing.assert_close(chunks, full)
    # Token by token, carrying the state each step.
    state, steps = None, []
    torch.manual_seed(0)
    for index in range(ids.shape[1]):
        extra, state = prepare(pe, ids[:, index : index + 1], state)
        steps.append(pe.embed(positions[:, index : index + 1], **extra))
    torch.testing.assert_close(torch.cat(steps, 1), full)


def test_abacus_random_offset_only_in_training_and_constant_per_sequence() -> None:
    pe = build("abacus", digit_token_ids=DIGITS, max_offset=3)
    ids = tokens(2, batch=200)
    extra, _ = prepare(pe.train(), ids)
    offset = extra["digit_offset"]
    assert offset.shape == ids.shape
    assert (offset == offset[:, :1]).all()  # one offset for every token of a sequence
    assert set(offset[:, 0].tolist()) == {0, 1, 2, 3}  # each sequence its own draw, all of [0, max_offset]
    index = abacus_indices(extra["digit_runs"], offset)
    digits = extra["digit_runs"] > 0
    assert torch.equal(index[digits], (extra["digit_runs"] + offset)[digits])
    assert torch.equal(index[~digits], offset[~digits])  # non-digits carry the offset too (place 0)
    extra, _ = prepare(pe.eval(), ids)
    assert (extra["digit_offset"] == 0).all()


def test_abacus_eval_offset_shifts_every_row_in_eval_mode_only() -> None:
    pe = build("abacus", digit_token_ids=DIGITS, max_offset=10, eval_offset=7).eval()
    ids = tokens(2)
    extra, _ = prepare(pe, ids)
    assert (extra["digit_offset"] == 7).all()
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    torch.testing.assert_close(pe.embed(positions, **extra), pe.table.weight[extra["digit_runs"] + 7])
    pe.eval_offset = 3  # settable on a trained model, as the offset vote does
    assert (prepare(pe, ids)[0]["digit_offset"] == 3).all()
    extra, _ = prepare(pe.train(), ids.repeat(40, 1))
    assert len(set(extra["digit_offset"][:, 0].tolist())) > 1  # training still draws at random


def test_abacus_training_offset_moves_the_embedding() -> None:
    pe = build("abacus", digit_token_ids=DIGITS, max_offset=100).train()
    ids = tokens(3, batch=1)
    positions = torch.arange(ids.shape[1]).view(1, -1)
    torch.manual_seed(1)
    first = pe.embed(positions, **prepare(pe, ids)[0])
    torch.manual_seed(2)
    second = pe.embed(positions, **prepare(pe, ids)[0])
    assert not torch.allclose(first, second)


def test_abacus_long_number_raises() -> None:
    pe = build("abacus", digit_token_ids=DIGITS, max_digits=5).eval()
    ok = torch.tensor([[3, 4, 5, 6, 7, 0, 3]])
    pe.embed(torch.arange(7).view(1, -1), **prepare(pe, ok)[0])
    too_long = torch.tensor([[3, 4, 5, 6, 7, 8, 0]])
    with pytest.raises(ValueError, match="number of 6 digits, but max_digits=5"):
        pe.embed(torch.arange(7).view(1, -1), **prepare(pe, too_long)[0])


def test_abacus_without_digits_gives_every_token_place_zero() -> None:
    pe = build("abacus").eval()
    ids = tokens(4)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    extra, _ = prepare(pe, ids)
    place_zero = pe.table.weight[0].expand(*ids.shape, -1)
    assert torch.equal(pe.embed(positions, ids, **extra), place_zero)
    assert torch.equal(pe.embed(positions), place_zero)


def test_abacus_padding_is_not_a_digit() -> None:
    pe = build("abacus", digit_token_ids=DIGITS).eval()
    ids = torch.tensor([[3, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1]])
    extra, _ = pe.prepare(input_ids=ids, inputs_embeds=None, attention_mask=mask, state=None)
    assert extra["digit_runs"].tolist() == [[0, 0, 1, 2]]


def test_abacus_state_reorders_for_beam_search() -> None:
    pe = build("abacus", digit_token_ids=DIGITS).train()
    _, state = prepare(pe, tokens(5))
    reordered = pe.reorder_state(state, torch.tensor([2, 2, 0]))
    assert torch.equal(reordered["runs"], state["runs"][[2, 2, 0]])
    assert torch.equal(reordered["offset"], state["offset"][[2, 2, 0]])


def test_abacus_options_validated() -> None:
    with pytest.raises(ValueError, match="max_digits"):
        build("abacus", max_digits=0)
    with pytest.raises(ValueError, match="max_offset"):
        build("abacus", max_offset=-1)
    assert build("abacus", max_digits=10, max_offset=0).table.num_embeddings == 11
    with pytest.raises(ValueError, match=r"eval_offset must be in 0..max_offset=5, got 6"):
        build("abacus", max_offset=5, eval_offset=6)
    with pytest.raises(ValueError, match="eval_offset must be an integer >= 0, got -1"):
        build("abacus").eval_offset = -1


def test_abacus_half_computes_in_float32() -> None:
    pe = build("abacus", digit_token_ids=DIGITS).eval()
    ids = tokens(6)
    extra, _ = prepare(pe, ids)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    reference = pe.embed(positions, **extra)
    half = pe.half().embed(positions, **extra)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, reference, rtol=1e-3, atol=1e-4)


# --- through the model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), [("learned", {}), ("abacus", {"digit_token_ids": DIGITS})])
def test_model_cached_decoding_equals_full_forward(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = MathPEForCausalLM(preset_config("tiny", pe=name, vocab_size=20, pe_options=options)).eval()
    with torch.no_grad():
        for param in model.model.pe.parameters():
            param.add_(torch.randn_like(param) * 0.5)
        ids = tokens(7, batch=2, seq=16)
        full = model(ids, use_cache=False).logits
        output = model(ids[:, :5])
        steps = [output.logits]
        for index in range(5, 16):
            output = model(ids[:, index : index + 1], cache=output.cache)
            steps.append(output.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)
