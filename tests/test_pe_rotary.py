"""The rotary family: rope, long_rope, math_rope, math_adaptive against references and through the model."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding, apply_rotary_pos_emb

from conftest import DEVICES
from helpers import DIGIT_IDS, left_pad, perturb_parameters, step_by_step_logits
from mathpe.model import MathPEForCausalLM, preset_config
from mathpe.pe import PEShape, build_pe
from mathpe.pe.long_rope import (
    dynamic_ntk_base,
    linear_scaled_inverse_frequencies,
    ntk_scaled_base,
    yarn_attention_factor,
    yarn_inverse_frequencies,
)
from mathpe.pe.math_rope import digit_pair_count, digit_place_angles
from mathpe.pe.rotary import apply_rotary, rope_inverse_frequencies

HEADS, HEAD_DIM, HIDDEN, MAX_POSITION = 4, 16, 64, 64
ROTARY_PES = ("rope", "long_rope", "math_rope", "math_adaptive")
VOCAB = 24
PLUS, EQUALS, PAD = 13, 14, 0
D = {digit: DIGIT_IDS[digit] for digit in range(10)}  # digit -> token id


def make(name: str, head_dim: int = HEAD_DIM, **options) -> torch.nn.Module:
    return build_pe(name, PEShape(HEADS, head_dim, HIDDEN, MAX_POSITION), **options)


def prepared_cos_sin(pe, ids: torch.Tensor, positions: torch.Tensor):
    """cos, sin (batch, seq, rotary_dim) of a PE for token ids at positions, via its ``prepare``."""
    embeds = torch.randn(*ids.shape, HIDDEN)
    extra, _ = pe.prepare(input_ids=ids, inputs_embeds=embeds, attention_mask=None, state=None)
    return pe.cos_sin(positions, torch.float32, **extra)


def hf_config(head_dim: int, fraction: float, base: float, max_position: int, **rope) -> PreTrainedConfig:
    """A minimal transformers config for ``ROPE_INIT_FUNCTIONS``."""
    return PreTrainedConfig(
        hidden_size=head_dim * HEADS,
        num_attention_heads=HEADS,
        head_dim=head_dim,
        max_position_embeddings=max_position,
        rope_parameters={"rope_theta": base, "partial_rotary_factor": fraction, **rope},
    )


# ----------------------------------------------------------------------------------------------- rope


@pytest.mark.parametrize(("fraction", "base"), [(1.0, 10000.0), (0.25, 10000.0), (0.5, 500.0)])
def test_rope_matches_gpt_neox(fraction: float, base: float):
    head_dim = 32
    config = GPTNeoXConfig(
        hidden_size=head_dim * HEADS,
        num_attention_heads=HEADS,
        rope_parameters={"rope_type": "default", "rope_theta": base, "partial_rotary_factor": fraction},
    )
    reference = GPTNeoXRotaryEmbedding(config)
    pe = make("rope", head_dim=head_dim, base=base, rotary_fraction=fraction)
    positions = torch.randint(0, 5000, (2, 13))  # arbitrary, unsorted positions
    q, k = torch.randn(2, 2, HEADS, 13, head_dim).unbind(0)
    cos, sin = reference(q, positions)
    torch.testing.assert_close(pe.inv_freq, reference.inv_freq, rtol=0, atol=0)
    for ours, theirs in zip(pe.apply(q, k, positions), apply_rotary_pos_emb(q, k, cos, sin), strict=True):
        torch.testing.assert_close(ours, theirs)


def rotated_scores(pe, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    q, k = pe.apply(q, k, positions)
    return q @ k.transpose(-1, -2)


def test_rope_scores_depend_only_on_relative_position():
    pe = make("rope").double()
    n = 24
    q = torch.randn(1, HEADS, 1, HEAD_DIM, dtype=torch.float64).expand(1, HEADS, n, HEAD_DIM)
    k = torch.randn(1, HEADS, 1, HEAD_DIM, dtype=torch.float64).expand(1, HEADS, n, HEAD_DIM)
    scores = rotated_scores(pe, q, k, torch.arange(n).unsqueeze(0))
    # The same q and k at every position: scores are constant along diagonals (a function of i - j).
    torch.testing.assert_close(scores[..., 1:, 1:], scores[..., :-1, :-1], atol=1e-5, rtol=1e-5)
    q, k = torch.randn(2, 1, HEADS, n, HEAD_DIM, dtype=torch.float64).unbind(0)
    positions = torch.randint(0, 100, (1, n))
    shifted = rotated_scores(pe, q, k, positions + 1000)
    torch.testing.assert_close(shifted, rotated_scores(pe, q, k, positions), atol=1e-4, rtol=1e-4)


def test_rope_inverse_frequencies_accept_a_tensor_base():
    scalar = rope_inverse_frequencies(16, 123.0)
    tensor = rope_inverse_frequencies(16, torch.tensor(123.0))
    torch.testing.assert_close(tensor, scalar, rtol=0, atol=0)
    torch.testing.assert_close(scalar[1] / scalar[0], torch.tensor(123.0 ** (-2 / 16)))


# ------------------------------------------------------------------------------------------ long_rope


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 8.0, 2.5])
@pytest.mark.parametrize(("head_dim", "fraction"), [(16, 1.0), (64, 0.25), (128, 1.0)])
def test_long_rope_linear_and_yarn_equal_transformers(factor: float, head_dim: int, fraction: float):
    original = 64
    extended = math.ceil(original * factor)
    dim = int(head_dim * fraction)
    linear_reference, linear_attention = ROPE_INIT_FUNCTIONS["linear"](
        hf_config(head_dim, fraction, 10000.0, extended, rope_type="linear", factor=factor)
    )
    pe = make("long_rope", head_dim=head_dim, rotary_fraction=fraction, scaling="linear", factor=factor)
    torch.testing.assert_close(pe.inv_freq, linear_reference, rtol=0, atol=0)
    assert pe.attention_scaling == linear_attention == 1.0
    torch.testing.assert_close(linear_scaled_inverse_frequencies(dim, 10000.0, factor), linear_reference)

    for beta_fast, beta_slow in [(32.0, 1.0), (16.0, 2.0)]:
        yarn_reference, yarn_attention = ROPE_INIT_FUNCTIONS["yarn"](
            hf_config(
                head_dim,
                fraction,
                10000.0,
                extended,
                rope_type="yarn",
                factor=factor,
                original_max_position_embeddings=original,
                beta_fast=beta_fast,
                beta_slow=beta_slow,
            )
        )
        pe = make(
            "long_rope",
            head_dim=head_dim,
            rotary_fraction=fraction,
            factor=factor,
            original_max_position=original,
            beta_fast=beta_fast,
            beta_slow=beta_slow,
        )
        assert pe.scaling == "yarn"  # the default
        torch.testing.assert_close(pe.inv_freq, yarn_reference, rtol=0, atol=0)
        assert pe.attention_scaling == pytest.approx(yarn_attention, abs=0)
        assert yarn_attention_factor(factor) == pytest.approx(
            1.0 + 0.1 * math.log(factor) if factor > 1 else 1.0
        )


def test_long_rope_yarn_explicit_attention_factor_and_original_length_default():
    reference, attention = ROPE_INIT_FUNCTIONS["yarn"](
        hf_config(
            HEAD_DIM,
            1.0,
            10000.0,
            4 * MAX_POSITION,
            rope_type="yarn",
            factor=4.0,
            attention_factor=0.7,
            original_max_position_embeddings=MAX_POSITION,
        )
    )
    pe = make("long_rope", attention_factor=0.7)  # original_max_position defaults to max_position
    torch.testing.assert_close(pe.inv_freq, reference, rtol=0, atol=0)
    assert pe.attention_scaling == attention == 0.7
    cos, sin = pe.cos_sin(torch.arange(10).unsqueeze(0), torch.float32)
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, 0.49))
    # High frequencies are kept (extrapolated), the lowest are interpolated by the factor.
    rope = rope_inverse_frequencies(HEAD_DIM, 10000.0)
    assert pe.inv_freq[0] == rope[0]
    torch.testing.assert_close(pe.inv_freq[-1], rope[-1] / 4)
    torch.testing.assert_close(yarn_inverse_frequencies(HEAD_DIM, 10000.0, 4.0, MAX_POSITION), pe.inv_freq)


@pytest.mark.parametrize("factor", [2.0, 4.0, 3.5])
@pytest.mark.parametrize(("head_dim", "fraction"), [(16, 1.0), (64, 0.5)])
def test_long_rope_dynamic_equals_transformers_dynamic_ntk(factor: float, head_dim: int, fraction: float):
    original = 64
    config = hf_config(head_dim, fraction, 10000.0, original, rope_type="dynamic", factor=factor)
    pe = make("long_rope", head_dim=head_dim, rotary_fraction=fraction, scaling="dynamic", factor=factor)
    dim = pe.rotary_dim
    for length in [1, 30, original, original + 1, 100, 1000]:
        positions = torch.randperm(length)[None]  # the length is the largest position + 1, in any order
        reference, attention = ROPE_INIT_FUNCTIONS["dynamic"](config, seq_len=torch.tensor(length))
        torch.testing.assert_close(pe.inverse_frequencies(positions), reference, rtol=0, atol=0)
        assert pe.attention_scaling == attention == 1.0
        base = dynamic_ntk_base(10000.0, factor, dim, torch.tensor(length), original)
        expected = 10000.0 * (factor * max(length, original) / original - factor + 1) ** (dim / (dim - 2))
        assert float(base) == pytest.approx(expected, rel=1e-6)
    # Up to the original length dynamic NTK is plain RoPE.
    rope = make("rope", head_dim=head_dim, rotary_fraction=fraction)
    positions = torch.arange(original).unsqueeze(0)
    for ours, theirs in zip(
        pe.cos_sin(positions, torch.float32), rope.cos_sin(positions, torch.float32), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_long_rope_static_ntk_follows_the_formula(factor: float):
    pe = make("long_rope", scaling="ntk", factor=factor)
    expected_base = 10000.0 * factor ** (HEAD_DIM / (HEAD_DIM - 2))
    assert ntk_scaled_base(10000.0, factor, HEAD_DIM) == pytest.approx(expected_base, rel=1e-12)
    exponents = torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM
    torch.testing.assert_close(pe.inv_freq.double(), expected_base**-exponents, rtol=1e-6, atol=0)
    rope = rope_inverse_frequencies(HEAD_DIM, 10000.0)
    assert pe.inv_freq[0] == rope[0]  # the highest frequency is kept
    torch.testing.assert_close(pe.inv_freq[-1], rope[-1] / factor)  # the lowest is interpolated by factor
    assert pe.attention_scaling == 1.0


def test_long_rope_linear_interpolates_positions():
    pe, rope = make("long_rope", scaling="linear", factor=4.0), make("rope")
    positions = torch.randint(0, 512, (2, 9))
    torch.testing.assert_close(pe.angles(positions), rope.angles(positions.double() / 4.0))


def test_long_rope_dynamic_is_cache_exact_within_the_original_length_only():
    """The documented caveat: cached keys keep the frequencies of their step (as in transformers)."""
    torch.manual_seed(0)
    config = preset_config(
        "tiny",
        pe="long_rope",
        vocab_size=VOCAB,
        num_layers=2,
        max_position_embeddings=16,  # also the original length
        pe_options={"scaling": "dynamic", "factor": 4.0},
    )
    model = MathPEForCausalLM(config).eval()
    ids = torch.randint(1, VOCAB, (1, 24))
    full_short, steps_short = model(ids[:, :16]).logits, step_by_step_logits(model, ids[:, :16], 4)
    torch.testing.assert_close(steps_short, full_short, atol=1e-4, rtol=1e-4)
    full_long, steps_long = model(ids).logits, step_by_step_logits(model, ids, 4)
    assert (steps_long[:, 16:] - full_long[:, 16:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scaling": "cubic"}, "scaling must be one of linear, ntk, dynamic, yarn, got 'cubic'"),
        ({"factor": 0.5}, "factor must be >= 1, got 0.5"),
        ({"original_max_position": 0}, "original_max_position must be a positive integer, got 0"),
        ({"beta_fast": 1.0, "beta_slow": 2.0}, "need beta_fast > beta_slow > 0"),
        ({"scaling": "linear", "attention_factor": 2.0}, "attention_factor=2.0 needs scaling='yarn'"),
        ({"base": 1.0}, "base must be > 1, got 1.0"),
        ({"rotary_fraction": 0.1}, "gives 1 rotary dims"),
    ],
)
def test_long_rope_bad_options(options: dict, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        make("long_rope", **options)


# ------------------------------------------------------------------------------------------ math_rope


def operands_ids() -> torch.Tensor:
    """``12+345=`` (reversed-format style operands of different lengths) as token ids, (1, 7)."""
    return torch.tensor([[D[1], D[2], PLUS, D[3], D[4], D[5], EQUALS]])


def test_math_rope_is_rope_at_init():
    rope = make("rope", rotary_fraction=0.5)
    plain = make("math_rope", rotary_fraction=0.5)
    digits = make("math_rope", rotary_fraction=0.5, digit_token_ids=DIGIT_IDS)
    positions = torch.randint(0, 5000, (2, 11))
    words = torch.full((2, 11), PLUS)
    mixed = torch.randint(0, VOCAB, (2, 11))
    expected = rope.cos_sin(positions, torch.float32)
    for pe, ids in [(plain, mixed), (digits, words)]:  # no digit ids, or no digit tokens: exactly RoPE
        for ours, theirs in zip(prepared_cos_sin(pe, ids, positions), expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_math_rope_model_without_digits_gives_rope_logits():
    torch.manual_seed(0)
    rope_model = MathPEForCausalLM(preset_config("tiny", pe="rope", vocab_size=VOCAB)).eval()
    math_model = MathPEForCausalLM(
        preset_config("tiny", pe="math_rope", vocab_size=VOCAB, pe_options={"digit_token_ids": DIGIT_IDS})
    ).eval()
    missing, unexpected = math_model.load_state_dict(rope_model.state_dict(), strict=False)
    assert set(missing) == {"model.pe.position_scale", "model.pe.digit_table"} and not unexpected
    ids = torch.tensor([[PLUS, EQUALS, 15, 16, PLUS, 20]])
    with torch.no_grad():
        torch.testing.assert_close(math_model(ids).logits, rope_model(ids).logits, rtol=0, atol=0)


def test_math_rope_aligns_digits_of_equal_place():
    pe = make("math_rope", digit_token_ids=DIGIT_IDS, digit_fraction=0.25)
    pairs, digit_pairs = HEAD_DIM // 2, 2
    assert pe.digit_pairs == digit_pairs == digit_pair_count(pairs, 0.25)
    ids, positions = operands_ids(), torch.arange(7).unsqueeze(0)
    extra, _ = pe.prepare(input_ids=ids, inputs_embeds=torch.zeros(1, 7, HIDDEN), attention_mask=None)
    assert extra["digit_runs"].tolist() == [[1, 2, 0, 1, 2, 3, 0]]
    angles = pe.angles(positions, **extra)[0]
    rope = make("rope").angles(positions)[0]
    places = {0: 0, 1: 1, 3: 0, 4: 1, 5: 2}  # token index -> place within its number
    for index, place in places.items():
        torch.testing.assert_close(angles[index, :digit_pairs], place * pe.inv_freq[:digit_pairs])
        torch.testing.assert_close(angles[index, digit_pairs:], rope[index, digit_pairs:])  # positions kept
    torch.testing.assert_close(angles[0, :digit_pairs], angles[3, :digit_pairs])  # '1' and '3': ones
    torch.testing.assert_close(angles[1, :digit_pairs], angles[4, :digit_pairs])  # '2' and '4': tens
    assert not torch.allclose(angles[0], angles[3])  # the operands stay apart in the other pairs
    for non_digit in (2, 6):
        torch.testing.assert_close(angles[non_digit], rope[non_digit], rtol=0, atol=0)
    # The digit pairs are the highest-frequency ones, so neighbouring places are well apart.
    assert pe.inv_freq[:digit_pairs].min() > pe.inv_freq[digit_pairs:].max()


def test_digit_place_angles_reference():
    angles = torch.randn(2, 5, 4)
    runs = torch.tensor([[0, 1, 2, 3, 0], [1, 0, 1, 1, 2]])
    inv_freq = torch.tensor([1.0, 0.5, 0.25, 0.125])
    out = digit_place_angles(angles, runs, inv_freq, 3)
    for b in range(2):
        for t in range(5):
            for i in range(4):
                expected = (runs[b, t] - 1) * inv_freq[i] if runs[b, t] > 0 and i < 3 else angles[b, t, i]
                assert out[b, t, i] == expected


def test_math_rope_digit_scores_depend_on_place_difference_only():
    """In the digit pairs, q.k of two digits is the same wherever their numbers sit."""
    pe = make("math_rope", digit_token_ids=DIGIT_IDS, digit_fraction=1.0).double()
    q = torch.randn(1, 1, 1, HEAD_DIM, dtype=torch.float64).expand(1, 1, 9, HEAD_DIM)
    k = torch.randn(1, 1, 1, HEAD_DIM, dtype=torch.float64).expand(1, 1, 9, HEAD_DIM)
    near = torch.tensor([[D[7], D[8], D[9], PLUS, D[1], D[2], D[3], EQUALS, PLUS]])
    far = torch.tensor([[D[7], D[8], D[9], PLUS, PLUS, PLUS, D[1], D[2], D[3]]])
    scores = []
    for ids in (near, far):
        extra, _ = pe.prepare(input_ids=ids, inputs_embeds=torch.zeros(1, 9, HIDDEN), attention_mask=None)
        cos, sin = pe.cos_sin(torch.arange(9).unsqueeze(0), torch.float64, **extra)
        rq, rk = apply_rotary(q, k, cos, sin)
        scores.append(rq @ rk.transpose(-1, -2))
    # Second operand's digits (at 4..6 in `near`, 6..8 in `far`) against the first operand's (0..2).
    torch.testing.assert_close(scores[0][..., 4:7, 0:3], scores[1][..., 6:9, 0:3])


def test_math_rope_position_scale_is_learnable_and_scales_positions():
    pe = make("math_rope")
    assert pe.position_scale.requires_grad and pe.position_scale.item() == 1.0
    with torch.no_grad():
        pe.position_scale.fill_(0.5)
    positions = torch.randint(0, 300, (1, 8))
    torch.testing.assert_close(pe.angles(positions), make("rope").angles(positions.double() * 0.5))
    q, k = torch.randn(2, 1, HEADS, 8, HEAD_DIM).unbind(0)
    sum(t.sum() for t in pe.apply(q, k, positions)).backward()
    assert pe.position_scale.grad is not None and pe.position_scale.grad != 0


def test_math_rope_bad_options():
    with pytest.raises(ValueError, match=r"digit_fraction must be in \(0, 1\], got 0.0"):
        make("math_rope", digit_fraction=0.0)
    assert make("math_rope", digit_fraction=0.1).digit_pairs == 1  # rounds down to 0: at least one pair
    assert digit_pair_count(2, 0.25) == 1 and digit_pair_count(8, 0.5) == 4
    with pytest.raises(ValueError, match=r"digit_token_ids \[-1\] are outside the vocabulary"):
        make("math_rope", digit_token_ids=[-1, 3])


# --------------------------------------------------------------------------- through the model, cached


def tiny_model(pe: str) -> MathPEForCausalLM:
    torch.manual_seed(0)
    options = {"digit_token_ids": DIGIT_IDS} if pe == "math_rope" else {}
    model = MathPEForCausalLM(
        preset_config("tiny", pe=pe, vocab_size=VOCAB, num_layers=2, pe_options=options)
    )
    perturb_parameters(model.model.pe, scale=0.3)  # leave the rope-equivalent initialisation
    return model.eval()


def digit_heavy_ids(length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 16, (1, length), generator=generator)  # ids 3..12 are digits: long numbers


@pytest.mark.parametrize("pe", ["math_rope", "long_rope"])  # math_adaptive: tests/test_pe_math_adaptive.py
@torch.no_grad()
def test_full_sequence_equals_step_by_step_cached_decoding(pe: str):
    model = tiny_model(pe)
    ids = digit_heavy_ids(20, seed=1)
    full = model(ids, use_cache=False).logits
    torch.testing.assert_close(step_by_step_logits(model, ids, prefix=3), full, atol=1e-4, rtol=1e-4)
    # Not trivially RoPE: the perturbed PE changes the logits.
    rope = MathPEForCausalLM(preset_config("tiny", pe="rope", vocab_size=VOCAB, num_layers=2)).eval()
    rope.load_state_dict(model.state_dict(), strict=False)
    assert (rope(ids).logits - full).abs().max() > 1e-3


@pytest.mark.parametrize("pe", ["math_rope"])  # math_adaptive: tests/test_pe_math_adaptive.py
@torch.no_grad()
def test_left_padded_batch_equals_each_row_alone(pe: str):
    model = tiny_model(pe)
    rows = [digit_heavy_ids(length, seed=length) for length in (5, 12, 9)]
    batch, mask = left_pad(rows, PAD)
    width = batch.shape[1]
    batched = model(batch, attention_mask=mask).logits
    for index, row in enumerate(rows):
        torch.testing.assert_close(
            batched[index, width - row.shape[1] :], model(row).logits[0], atol=1e-4, rtol=1e-4
        )
    # And decoding on from the padded batch with the cache continues each row exactly.
    out = model(batch, attention_mask=mask, use_cache=True)
    step = torch.full((len(rows), 1), D[4])
    mask = torch.cat([mask, torch.ones_like(step)], 1)
    after = model(step, attention_mask=mask, cache=out.cache, use_cache=True).logits
    for index, row in enumerate(rows):
        alone = model(torch.cat([row, step[:1]], 1)).logits[0, -1]
        torch.testing.assert_close(after[index, -1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pe", ["long_rope", "math_rope", "math_adaptive"])
@torch.no_grad()
def test_save_pretrained_round_trip_keeps_the_learned_pe(pe: str, tmp_path):
    model = tiny_model(pe)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = digit_heavy_ids(12, seed=7)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


# --------------------------------------------------------------------------------- dtypes and devices


def perturbed(name: str) -> torch.nn.Module:
    options = {"digit_token_ids": DIGIT_IDS} if name == "math_rope" else {}
    pe = make(name, **options)
    perturb_parameters(pe)
    return pe.eval()


def rotate(pe, dtype: torch.dtype, seq: int = 60, device: str = "cpu") -> torch.Tensor:
    """Rotated (q, k) stacked, for random q, k, token ids and embeddings."""
    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, HEADS, seq, HEAD_DIM, generator=generator).to(device, dtype).unbind(0)
    hidden = torch.randn(2, seq, HIDDEN, generator=generator).to(device, dtype)
    ids = torch.randint(0, VOCAB, (2, seq), generator=generator).to(device)
    extra, _ = pe.prepare(input_ids=ids, inputs_embeds=hidden, attention_mask=None)
    positions = torch.arange(seq, device=device).unsqueeze(0).expand(2, seq)
    return torch.stack(pe.apply(q, k, positions, **extra))


@pytest.mark.parametrize("name", ROTARY_PES)
def test_float64_agrees_with_float32(name: str):
    pe = perturbed(name)
    out32 = rotate(pe, torch.float32)
    out64 = rotate(copy.deepcopy(pe).double(), torch.float64)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ROTARY_PES)
def test_half_precision_inputs_are_finite_and_close(name: str, dtype: torch.dtype):
    """Half-precision q, k (and embeddings) give rotations close to float32 ones.

    math_adaptive's embedding-driven phase steps err by one step's rounding each (a random walk), so it is
    checked over 60 positions like the others.
    """
    pe = perturbed(name)
    half = copy.deepcopy(pe).to(dtype)
    assert half.inv_freq.dtype == torch.float32
    assert all(getattr(half, p).dtype == torch.float32 for p in half.float32_parameters)
    tolerance = 2e-2 if dtype == torch.float16 else 1e-1
    reference = rotate(pe, torch.float32)
    out = rotate(half, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=tolerance, rtol=0)
    # float32 angle state makes the rotation tables exactly those of the float32 module.
    positions = torch.arange(300).unsqueeze(0)
    torch.testing.assert_close(half.angles(positions), pe.angles(positions), rtol=0, atol=0)


@pytest.mark.parametrize("name", ROTARY_PES)
def test_autocast_keeps_angles_in_float32(name: str):
    pe = perturbed(name)
    positions = torch.arange(500).unsqueeze(0)
    expected = pe.cos_sin(positions, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = pe.cos_sin(positions, torch.bfloat16)
    torch.testing.assert_close(cos, expected[0].to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(sin, expected[1].to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("name", ROTARY_PES)
def test_meta_device_moves_everything(name: str):
    pe = perturbed(name).to("meta")
    assert all(t.device.type == "meta" for t in [*pe.parameters(), *pe.buffers()])
    positions = torch.arange(16, device="meta").unsqueeze(0)
    cos, sin = pe.cos_sin(positions, torch.float16)
    assert cos.device.type == sin.device.type == "meta" and cos.dtype == torch.float16


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ROTARY_PES)
def test_device_move_gives_the_same_rotation(name: str, device: str):
    pe = perturbed(name)
    expected = rotate(pe, torch.float32)
    moved = copy.deepcopy(pe).to(device)
    torch.testing.assert_close(
        rotate(moved, torch.float32, device=device).cpu(), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ROTARY_PES)
def test_default_options_build_and_run_long(name: str):
    pe = make(name)
    positions = torch.arange(8 * MAX_POSITION).unsqueeze(0)
    cos, sin = pe.cos_sin(positions, torch.float32)
    assert (
        cos.shape == (1, 8 * MAX_POSITION, HEAD_DIM)
        and torch.isfinite(cos).all()
        and torch.isfinite(sin).all()
    )
