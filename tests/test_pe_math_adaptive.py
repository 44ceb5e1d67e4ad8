"""math_adaptive: the integrated phase against its formula, RoPE at init, chunked prepare, the model."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import left_pad, perturb_parameters, step_by_step_logits
from mathpe.attention import positions_from_mask
from mathpe.model import MathPEConfig, MathPEForCausalLM, preset_config
from mathpe.pe import PEShape, build_pe
from mathpe.pe.math_adaptive import frequency_modulation, phase_shift, token_gates

HEADS, HEAD_DIM, HIDDEN, MAX_POSITION = 4, 16, 64, 64
PAIRS = HEAD_DIM // 2
VOCAB, PAD, EOS = 24, 0, 1


def make(**options) -> torch.nn.Module:
    return build_pe(
        "math_adaptive",
        PEShape(HEADS, HEAD_DIM, HIDDEN, MAX_POSITION),
        **options,
    )


def perturbed(**options) -> torch.nn.Module:
    pe = make(**options)
    perturb_parameters(pe)
    return pe.eval()


def left_padded_mask(batch: int, seq: int, pads: list[int]) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, count in enumerate(pads):
        mask[row, :count] = 0
    return mask


def prepared_angles(
    pe, embeds: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None = None
):
    extra, state = pe.prepare(input_ids=None, inputs_embeds=embeds, attention_mask=mask)
    if positions is None:
        positions = positions_from_mask(mask) if mask is not None else torch.arange(embeds.shape[1])[None]
    return pe.angles(positions.expand(embeds.shape[0], -1), **extra), extra, state


def reference_angles(pe, positions: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The documented formula, token by token in float64: (position + sum over real tokens of g m - 1) w."""
    pe = copy.deepcopy(pe).double()
    batch, seq = positions.shape
    frequencies = pe.inv_freq.double() * pe.frequency_scale
    out = torch.zeros(batch, seq, PAIRS, dtype=torch.float64)
    for b in range(batch):
        shift = torch.zeros(PAIRS, dtype=torch.float64)
        for t in range(seq):
            if mask[b, t]:
                e = embeds[b, t].double()
                gate = (
                    2 * torch.sigmoid(e @ pe.gate_weight + pe.gate_bias) if pe.contextual_positions else 1.0
                )
                m = (
                    1 + pe.max_modulation * torch.tanh(pe.modulation_weight @ e + pe.modulation_bias)
                    if pe.modulation
                    else 1.0
                )
                shift = shift + gate * m - 1
            out[b, t] = (positions[b, t] + shift) * frequencies
    return out


# ----------------------------------------------------------------------------------------- the formula


@pytest.mark.parametrize(
    "options", [{}, {"contextual_positions": False}, {"modulation": False}, {"max_modulation": 0.9}]
)
def test_matches_its_formula_with_derived_and_explicit_positions(options: dict):
    pe = perturbed(**options)
    mask = left_padded_mask(3, 9, [0, 3, 8])
    embeds = torch.randn(3, 9, HIDDEN)
    derived = positions_from_mask(mask)
    explicit = torch.randint(0, 500, (3, 9))  # packing offsets, KV-cache offsets: honoured, then shifted
    for positions in (derived, explicit):
        angles, extra, state = prepared_angles(pe, embeds, mask, positions)
        expected = reference_angles(pe, positions, embeds, mask)
        real = mask.bool()
        torch.testing.assert_close(angles.double()[real], expected[real], rtol=1e-6, atol=1e-5)
        assert extra["position_shift"].shape == (3, 9, PAIRS) and state.shape == (3, PAIRS)
        torch.testing.assert_close(state, extra["position_shift"][:, -1])
    # With the model's positions the angle is the integrated phase: sum of g m over real tokens, minus 1.
    steps = pe.phase_steps(embeds, mask)
    phase = steps.double().cumsum(1) - 1
    angles, _, _ = prepared_angles(pe, embeds, mask)
    frequencies = pe.inv_freq * pe.frequency_scale.detach()
    torch.testing.assert_close(angles[mask.bool()], (phase.float() * frequencies)[mask.bool()])
    low, high = 1 - pe.max_modulation, 2 * (1 + pe.max_modulation)
    assert (steps[mask.bool()] > 0).all() and (steps[mask.bool()] < high).all()
    assert (steps[~mask.bool()] == 0).all()
    if not pe.contextual_positions:  # gates fixed at 1: steps are the modulation alone
        assert (steps[mask.bool()] > low).all() and (steps[mask.bool()] < 1 + pe.max_modulation).all()
    if not pe.modulation:  # one step per token, shared by all pairs
        assert torch.equal(steps, steps[..., :1].expand_as(steps))


def test_helpers_gate_modulate_and_accumulate():
    embeds = torch.randn(2, 10, HIDDEN)
    weight = 0.1 * torch.randn(HIDDEN)
    mask = left_padded_mask(2, 10, [3, 0])
    gates = token_gates(embeds, weight, torch.tensor(0.3), mask)
    assert (gates[0, :3] == 0).all() and ((gates[mask.bool()] > 0) & (gates[mask.bool()] < 2)).all()
    assert torch.equal(token_gates(embeds, torch.zeros(HIDDEN), torch.tensor(0.0), None), torch.ones(2, 10))
    modulation = frequency_modulation(embeds, 0.1 * torch.randn(PAIRS, HIDDEN), torch.zeros(PAIRS), 0.5)
    assert modulation.shape == (2, 10, PAIRS) and ((modulation > 0.5) & (modulation < 1.5)).all()
    steps = gates.unsqueeze(-1) * modulation
    full = phase_shift(steps, mask)
    assert full.dtype == torch.float64 and (full[0, :3] == 0).all()
    torch.testing.assert_close(full[:, -1], (steps.double() - mask.unsqueeze(-1)).sum(1))
    for split in range(1, 10):
        head = phase_shift(steps[:, :split], mask[:, :split])
        tail = phase_shift(steps[:, split:], mask[:, split:], head[:, -1])
        torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=0, atol=1e-12)


def test_phase_differences_depend_only_on_the_tokens_between():
    """Relative: the angle between two tokens of a span is the same behind any prefix (unlike pos * m)."""
    pe = perturbed()
    span = torch.randn(1, 12, HIDDEN)
    differences = []
    for prefix in (0, 5, 300):
        embeds = torch.cat([torch.randn(1, prefix, HIDDEN), span], 1)
        angles, _, _ = prepared_angles(pe, embeds, None)
        span_angles = angles[0, prefix:].double()
        differences.append(span_angles - span_angles[:1])
    for other in differences[1:]:
        torch.testing.assert_close(other, differences[0], rtol=0, atol=2e-4)  # float32 angles up to ~1000
    # And it is not RoPE: the differences are not those of the positions.
    rope_differences = torch.arange(12.0)[:, None] * pe.inv_freq * pe.frequency_scale.detach()
    assert (differences[0].float() - rope_differences).abs().max() > 0.1


# ------------------------------------------------------------------------------------------ RoPE at init


def test_equals_rope_bit_for_bit_at_init_padded_or_not():
    pe, rope = (
        make(),
        build_pe("rope", PEShape(HEADS, HEAD_DIM, HIDDEN, 64)),
    )
    embeds = torch.randn(2, 40, HIDDEN)
    for mask in (None, left_padded_mask(2, 40, [0, 13])):
        extra, state = pe.prepare(input_ids=None, inputs_embeds=embeds, attention_mask=mask)
        assert torch.equal(extra["position_shift"], torch.zeros(2, 40, PAIRS, dtype=torch.float64))
        assert torch.equal(state, torch.zeros(2, PAIRS, dtype=torch.float64))
        positions = torch.arange(40)[None].expand(2, 40) if mask is None else positions_from_mask(mask)
        for ours, theirs in zip(
            pe.cos_sin(positions, torch.float32, **extra), rope.cos_sin(positions, torch.float32), strict=True
        ):
            assert torch.equal(ours, theirs)
    both_off = make(contextual_positions=False, modulation=False)
    assert both_off.prepare(input_ids=None, inputs_embeds=embeds, attention_mask=None) == ({}, None)
    positions = torch.randint(0, 1000, (2, 40))
    assert torch.equal(both_off.angles(positions), rope.angles(positions))


def test_model_at_init_gives_rope_logits_padded_or_not():
    torch.manual_seed(0)
    rope_model = MathPEForCausalLM(preset_config("tiny", pe="rope", vocab_size=VOCAB)).eval()
    adaptive = MathPEForCausalLM(preset_config("tiny", pe="math_adaptive", vocab_size=VOCAB)).eval()
    missing, _ = adaptive.load_state_dict(rope_model.state_dict(), strict=False)
    assert missing and all(name.startswith("model.pe.") for name in missing)
    ids = torch.randint(2, VOCAB, (2, 12))
    mask = left_padded_mask(2, 12, [0, 5])
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            torch.testing.assert_close(
                adaptive(ids, **kwargs).logits, rope_model(ids, **kwargs).logits, rtol=0, atol=0
            )


# --------------------------------------------------------------------------------------- carried state


def test_prepare_split_anywhere_with_the_carried_state_equals_one_prepare():
    pe = perturbed()
    seq = 11
    embeds, mask = torch.randn(3, seq, HIDDEN), left_padded_mask(3, seq, [0, 4, 10])
    full, full_state = pe.prepare(input_ids=None, inputs_embeds=embeds, attention_mask=mask)
    for split in range(1, seq):
        head, state = pe.prepare(
            input_ids=None, inputs_embeds=embeds[:, :split], attention_mask=mask[:, :split]
        )
        state = pe.reorder_state(state, torch.arange(3))  # what beam search does with the cache
        tail, last = pe.prepare(
            input_ids=None, inputs_embeds=embeds[:, split:], attention_mask=mask[:, split:], state=state
        )
        shift = torch.cat([head["position_shift"], tail["position_shift"]], 1)
        # float32 gates of a shorter chunk may round differently (matmul blocking): ulps, not drift.
        torch.testing.assert_close(shift, full["position_shift"], rtol=0, atol=1e-6)
        torch.testing.assert_close(last, full_state, rtol=0, atol=1e-6)


def test_half_precision_embeddings_move_neighbour_angles_by_one_step_error_only():
    """bfloat16 embeddings: the angle between neighbours at position ~4000 is as exact as at position 1.

    Under the old ``position * m`` design it moved by ~4000 * 4e-3 * omega; here by one step's rounding.
    """
    pe = perturbed()
    embeds = torch.randn(1, 4096, HIDDEN)
    exact, _, _ = prepared_angles(pe, embeds, None)
    rounded, _, _ = prepared_angles(copy.deepcopy(pe).to(torch.bfloat16), embeds.to(torch.bfloat16), None)
    neighbour_error = ((rounded.diff(dim=1) - exact.diff(dim=1)).abs())[0, -100:].max()
    assert neighbour_error < 2e-2  # one step (< 3) off by ~3e-3 relative, times omega <= 1.3
    assert (rounded - exact).abs().max() < 1.0  # the accumulated drift: a random walk, ~sqrt(t) * 3e-3


def test_options_and_parameters():
    with pytest.raises(
        ValueError, match=r"max_modulation must be in \[0, 1\) so frequencies stay positive, got 1.0"
    ):
        make(max_modulation=1.0)
    everything = {name for name, _ in make().named_parameters()}
    assert everything == {
        "frequency_scale",
        "modulation_weight",
        "modulation_bias",
        "gate_weight",
        "gate_bias",
    }
    no_gates = make(contextual_positions=False)
    assert {name for name, _ in no_gates.named_parameters()} == {
        "frequency_scale",
        "modulation_weight",
        "modulation_bias",
    }
    half = no_gates.to(torch.bfloat16)
    assert all(parameter.dtype == torch.float32 for parameter in half.parameters())


# ------------------------------------------------------------------------------------- through the model


def model_config(pe: str = "math_adaptive", **options) -> MathPEConfig:
    return MathPEConfig(
        pe=pe,
        pe_options=options,
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=MAX_POSITION,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
    )


def make_model(**options) -> MathPEForCausalLM:
    model = MathPEForCausalLM(model_config(**options))
    pe = model.model.pe
    perturb_parameters(pe, scale=0.3)
    with torch.no_grad():
        # Embeddings have std 0.02: scale the PE weights so gates and modulation really move, and the
        # attention weights so attention (hence the PE) really shapes the logits.
        pe.gate_weight.mul_(50.0)
        pe.modulation_weight.mul_(50.0)
        for layer in model.model.layers:
            layer.attn.qkv_proj.weight.mul_(10.0)
    return model.eval()


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(2, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def greedy(model, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
    return model.generate(
        input_ids,
        attention_mask=attention_mask if attention_mask is not None else torch.ones_like(input_ids),
        max_new_tokens=24,
        min_new_tokens=24,
        do_sample=False,
        pad_token_id=PAD,
        **kwargs,
    )


@torch.no_grad()
def test_model_gates_and_modulation_really_act():
    model = make_model()
    embeds = model.model.embed_tokens(prompt(30, seed=0))
    steps = model.model.pe.phase_steps(embeds, None)
    assert steps.std() > 0.2  # far from the RoPE step 1


@torch.no_grad()
def test_full_sequence_logits_equal_step_by_step_cached_logits():
    model = make_model()
    ids = prompt(20, seed=2)
    full = model(ids, use_cache=False).logits
    torch.testing.assert_close(step_by_step_logits(model, ids, prefix=3), full, atol=1e-4, rtol=1e-4)
    plain = copy.deepcopy(model)  # the same model with RoPE steps (frequency_scale kept)
    for name in ("gate_weight", "gate_bias", "modulation_weight", "modulation_bias"):
        getattr(plain.model.pe, name).zero_()
    assert (plain(ids).logits - full).abs().max() > 1e-2  # the gates and modulation matter


@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone_and_generates_the_same():
    model = make_model()
    prompts = [prompt(length, seed=10 + length) for length in (4, 11, 7)]
    batch, mask = left_pad(prompts, PAD)
    width = batch.shape[1]
    logits = model(batch, attention_mask=mask).logits
    for row, p in enumerate(prompts):
        torch.testing.assert_close(
            logits[row, width - p.shape[1] :], model(p).logits[0], atol=1e-4, rtol=1e-4
        )
    batched = greedy(model, batch, mask)
    for row, p in enumerate(prompts):
        assert torch.equal(batched[row, width - p.shape[1] :], greedy(model, p)[0]), f"row {row} differs"


@torch.no_grad()
def test_beam_search_cached_equals_uncached():
    """Beam search reorders the carried phase shift with the cache: same beams, same scores."""
    model = make_model()
    ids = prompt(6, seed=3).repeat(2, 1)
    kwargs = {
        "max_new_tokens": 10,
        "num_beams": 4,
        "do_sample": False,
        "pad_token_id": PAD,
        "return_dict_in_generate": True,
        "output_scores": True,
    }
    cached = model.generate(ids, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.sequences.shape == (2, 16) and torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)
    for step_cached, step_uncached in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(step_cached, step_uncached, atol=1e-4, rtol=1e-4)


def test_gradients_reach_gates_and_modulation():
    model = make_model()
    model.train()
    ids = prompt(16, seed=4)
    model(ids, labels=ids).loss.backward()
    for name, parameter in model.model.pe.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
