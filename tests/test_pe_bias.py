"""Bias PEs (alibi, t5_relative, diet, fire, kerple) against reference implementations and formulas."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.t5.modeling_t5 import T5Attention

from mathpe.model.configuration import preset_config
from mathpe.model.modeling import MathPEForCausalLM
from mathpe.pe import PEShape, build_pe
from mathpe.pe.bias import (
    alibi_slopes,
    fire_interpolated_distance,
    integer_distance,
    inverse_softplus,
    t5_relative_bucket,
)

HEADS, HEAD_DIM, HIDDEN, MAX_POSITION = 4, 16, 64, 64

#: (registry name, options) of every bias method, each variant once.
BIAS_PES = [
    ("alibi", {}),
    ("t5_relative", {}),
    ("diet", {"variant": "abs"}),
    ("diet", {"variant": "rel", "max_relative_distance": 8}),
    ("fire", {"init_L": 6.0}),
    ("kerple", {}),
]
RELATIVE_PES = [
    ("alibi", {}),
    ("t5_relative", {"num_buckets": 8, "max_distance": 20}),
    ("kerple", {}),
    ("diet", {"variant": "rel", "max_relative_distance": 8}),
]


def ids(params: list[tuple[str, dict]]) -> list[str]:
    return [f"{name}-{'-'.join(map(str, options.values()))}" if options else name for name, options in params]


def make(name: str, options: dict, seed: int = 0) -> torch.nn.Module:
    """The PE with every parameter randomised, so zero-initialised tables are exercised too."""
    torch.manual_seed(seed)
    pe = build_pe(name, PEShape(HEADS, HEAD_DIM, HIDDEN, MAX_POSITION), **options)
    with torch.no_grad():
        for param in pe.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return pe


def test_integer_distance_is_query_minus_key() -> None:
    q = torch.tensor([[3, 7]])
    k = torch.tensor([[0, 5, 9]])
    assert integer_distance(q, k).tolist() == [[[[3, -2, -6], [7, 2, -2]]]]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 50), (64, 1000), (10, 7), (8, 20)])
def test_t5_bucket_equals_transformers(bidirectional: bool, num_buckets: int, max_distance: int) -> None:
    relative = torch.arange(-1000, 1001)
    expected = T5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    got = t5_relative_bucket(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    assert torch.equal(got, expected)
    assert got.min() >= 0 and got.max() < num_buckets


def test_t5_relative_bias_is_the_bucket_table() -> None:
    pe = make("t5_relative", {"num_buckets": 8, "max_distance": 20})
    q, k = torch.arange(30).view(1, -1), torch.arange(30).view(1, -1)
    bias = pe.bias(q, k)
    buckets = T5Attention._relative_position_bucket(
        k[0][None, :] - q[0][:, None], bidirectional=False, num_buckets=8, max_distance=20
    )
    table = pe.relative_attention_bias.weight
    expected = table[buckets].permute(2, 0, 1)  # (heads, q, k)
    torch.testing.assert_close(bias[0], expected)


@pytest.mark.parametrize("num_heads", range(1, 33))
def test_alibi_slopes_equal_bloom(num_heads: int) -> None:
    alibi = build_alibi_tensor(torch.ones(1, 3), num_heads, torch.float64)  # (heads, 1, 3): slope * [0, 1, 2]
    torch.testing.assert_close(alibi_slopes(num_heads).double(), alibi[:, 0, 1], rtol=1e-6, atol=0)


def test_alibi_slopes_paper_values() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads: the 4 slopes of 4 heads, then the 1st and 3rd of 8 heads.
    expected = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected))


def test_alibi_bias_is_minus_slope_times_distance() -> None:
    pe = build_pe("alibi", PEShape(6, 8, 48, 16))
    q = torch.tensor([[5, 9, 40]])
    k = torch.arange(0, 41).view(1, -1)
    bias = pe.bias(q, k)
    distance = (q[0][:, None] - k[0][None, :]).double()
    expected = -alibi_slopes(6).double()[:, None, None] * distance
    torch.testing.assert_close(bias[0].double(), expected)


def test_inverse_softplus() -> None:
    values = torch.tensor([0.01, 0.5, 1.0, 3.0])
    torch.testing.assert_close(torch.nn.functional.softplus(inverse_softplus(values)), values)


def test_kerple_matches_formula() -> None:
    pe = make("kerple", {})
    q, k = torch.tensor([[4, 10, 100]]), torch.arange(0, 101).view(1, -1)
    r1, r2 = pe.rates()
    assert (r1 > 0).all() and (r2 > 0).all()
    distance = (q[0][:, None] - k[0][None, :]).double().abs()
    expected = -r1.double()[:, None, None] * torch.log(1 + r2.double()[:, None, None] * distance)
    torch.testing.assert_close(pe.bias(q, k)[0].double(), expected, rtol=1e-5, atol=1e-5)


def reference_fire(pe: torch.nn.Module, query: list[int], keys: list[int], eps: float = 1e-6) -> torch.Tensor:
    """FIRE's formula of Li et al. 2023 in float64, one pair at a time: (heads, q, k)."""
    c = pe.c.item()
    threshold = abs(pe.L_multiplier.item()) * pe.init_L
    w1, b1 = pe.mlp_in.weight.detach().double(), pe.mlp_in.bias.detach().double()
    w2, b2 = pe.mlp_out.weight.detach().double(), pe.mlp_out.bias.detach().double()
    out = torch.zeros(pe.shape.num_heads, len(query), len(keys), dtype=torch.float64)
    for a, i in enumerate(query):
        for b, j in enumerate(keys):
            x = math.log(abs(c * (i - j)) + 1) / (math.log(abs(c * max(i, threshold)) + 1) + eps)
            out[:, a, b] = w2 @ torch.relu(w1[:, 0] * x + b1) + b2
    return out


def test_fire_matches_paper_formula_in_float64() -> None:
    pe = make("fire", {"init_L": 6.0})  # positions beyond L exercise the progressive normaliser
    query, keys = [0, 3, 6, 7, 20, 31], list(range(32))
    bias = pe.bias(torch.tensor([query]), torch.tensor([keys]))
    torch.testing.assert_close(bias[0].double(), reference_fire(pe, query, keys), rtol=1e-5, atol=1e-5)


def test_fire_interpolated_distance_bounded_and_query_dependent() -> None:
    positions = torch.arange(200).view(1, -1)
    distance = fire_interpolated_distance(positions, positions, torch.tensor(0.1), torch.tensor(16.0))
    causal = torch.ones(200, 200).tril().bool()
    assert distance[0, 0][causal].min() >= 0 and distance[0, 0][causal].max() <= 1
    # Past the threshold the distance to the first token is 1: the normaliser is psi(i) itself.
    torch.testing.assert_close(distance[0, 0, 16:, 0], torch.ones(184), rtol=1e-5, atol=1e-5)
    # Below it, the same relative distance gives the same value; past it, it shrinks as i grows.
    assert distance[0, 0, 5, 2] == distance[0, 0, 10, 7]
    assert distance[0, 0, 150, 147] < distance[0, 0, 50, 47]


def reference_sinusoids(positions: list[int], dim: int) -> torch.Tensor:
    """Vaswani et al.'s table in float64: sin on even dims, cos on odd dims."""
    table = torch.zeros(len(positions), dim, dtype=torch.float64)
    for row, pos in enumerate(positions):
        for i in range(0, dim, 2):
            angle = pos / 10000 ** (i / dim)
            table[row, i] = math.sin(angle)
            table[row, i + 1] = math.cos(angle)
    return table


def test_diet_abs_matches_formula() -> None:
    pe = make("diet", {"variant": "abs", "rank": 5})
    query, keys = [2, 17, 300], [0, 1, 2, 17, 290, 300]
    bias = pe.bias(torch.tensor([query]), torch.tensor([keys]))
    pq = reference_sinusoids(query, HIDDEN) @ pe.query_weight.double()  # (heads, q, rank)
    pk = reference_sinusoids(keys, HIDDEN) @ pe.key_weight.double()
    expected = pq @ pk.transpose(-1, -2) / math.sqrt(5)
    torch.testing.assert_close(bias[0].double(), expected, rtol=1e-4, atol=1e-4)


def test_diet_rel_is_a_clipped_table() -> None:
    pe = make("diet", {"variant": "rel", "max_relative_distance": 4})
    query, keys = torch.tensor([[10]]), torch.tensor([[0, 5, 6, 9, 10, 12, 20]])
    bias = pe.bias(query, keys)[0, :, 0]  # (heads, k)
    table = pe.relative_bias  # (2K + 1, heads), row K + (j - i)
    for column, j in enumerate(keys[0].tolist()):
        row = 4 + max(-4, min(4, j - 10))
        torch.testing.assert_close(bias[:, column], table[row])


@pytest.mark.parametrize(("name", "options"), RELATIVE_PES, ids=ids(RELATIVE_PES))
def test_relative_methods_are_translation_invariant(name: str, options: dict) -> None:
    pe = make(name, options)
    q, k = torch.tensor([[0, 3, 9, 30]]), torch.arange(0, 31).view(1, -1)
    for shift in (1, 17, 450):
        torch.testing.assert_close(pe.bias(q + shift, k + shift), pe.bias(q, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "options"), [("fire", {"init_L": 6.0}), ("diet", {"variant": "abs"})])
def test_absolute_methods_are_not_translation_invariant(name: str, options: dict) -> None:
    pe = make(name, options)
    q, k = torch.tensor([[0, 3, 9, 30]]), torch.arange(0, 31).view(1, -1)
    assert not torch.allclose(pe.bias(q + 40, k + 40), pe.bias(q, k))


@pytest.mark.parametrize(("name", "options"), BIAS_PES, ids=ids(BIAS_PES))
def test_bias_shapes_and_batches(name: str, options: dict) -> None:
    pe = make(name, options)
    q_shared, k_shared = torch.arange(5, 8).view(1, -1), torch.arange(0, 8).view(1, -1)
    bias = pe.bias(q_shared, k_shared)
    assert bias.shape == (1, HEADS, 3, 8) and bias.dtype == torch.float32
    q_batch = torch.stack([q_shared[0], q_shared[0] + 3])
    k_batch = torch.stack([k_shared[0], k_shared[0] + 3])
    batched = pe.bias(q_batch, k_batch)
    assert batched.shape == (2, HEADS, 3, 8)
    for row in range(2):
        torch.testing.assert_close(
            batched[row : row + 1], pe.bias(q_batch[row : row + 1], k_batch[row : row + 1])
        )
    # Shared queries with per-row keys (and the reverse) broadcast to the batch.
    assert pe.bias(q_shared, k_batch).shape == (2, HEADS, 3, 8)
    assert pe.bias(q_batch, k_shared).shape == (2, HEADS, 3, 8)


@pytest.mark.parametrize(("name", "options"), BIAS_PES, ids=ids(BIAS_PES))
def test_bias_finite_at_eight_times_max_position(name: str, options: dict) -> None:
    pe = make(name, options)
    keys = torch.arange(8 * MAX_POSITION).view(1, -1)
    bias = pe.bias(keys[:, -1:], keys)
    assert bias.shape == (1, HEADS, 1, 8 * MAX_POSITION) and torch.isfinite(bias).all()


@pytest.mark.parametrize(("name", "options"), BIAS_PES, ids=ids(BIAS_PES))
def test_float32_compute_under_double_half_and_autocast(name: str, options: dict) -> None:
    pe = make(name, options)
    q, k = torch.tensor([[0, 4, 9, 60]]), torch.arange(0, 61).view(1, -1)
    reference = pe.bias(q, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = pe.bias(q, k)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, reference)
    double = pe.double().bias(q, k)
    assert double.dtype == torch.float32
    torch.testing.assert_close(double, reference)
    half = pe.half().bias(q, k)  # parameters rounded to half; the maths still runs in float32
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("t5_relative", {"max_distance": 16}, "max_distance"),
        ("t5_relative", {"num_buckets": 1}, "num_buckets"),
        ("diet", {"variant": "shaw"}, "variant"),
        ("diet", {"rank": 0}, "rank"),
        ("diet", {"variant": "rel", "max_relative_distance": 0}, "max_relative_distance"),
        ("fire", {"init_c": 0.0}, "init_c"),
        ("fire", {"init_L": -1.0}, "init_L"),
        ("fire", {"mlp_width": 0}, "mlp_width"),
    ],
)
def test_bad_options_raise(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_pe(name, PEShape(HEADS, HEAD_DIM, HIDDEN, MAX_POSITION), **options)


@pytest.mark.parametrize(("name", "options"), [*BIAS_PES, ("fire", {})], ids=[*ids(BIAS_PES), "fire-default"])
def test_model_cached_decoding_equals_full_forward(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = MathPEForCausalLM(preset_config("tiny", pe=name, vocab_size=20, pe_options=options)).eval()
    with torch.no_grad():
        for param in model.model.pe.parameters():
            param.add_(torch.randn_like(param) * 0.5)
        tokens = torch.randint(0, 20, (2, 14))
        full = model(tokens, use_cache=False).logits
        output = model(tokens[:, :6])
        steps = [output.logits]
        for index in range(6, 14):
            output = model(tokens[:, index : index + 1], cache=output.cache)
            steps.append(output.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("q_len", "k_len"), [(1, 300), (4, 61), (48, 48)])
def test_low_rank_position_bias_is_the_same_product_whichever_way_it_is_associated(q_len: int, k_len: int):
    """Decoding (few queries, many keys) regroups the product; the value must not change."""
    from mathpe.pe.bias import low_rank_position_bias

    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, q_len, 32, generator=generator, dtype=torch.float64)
    keys = torch.randn(2, k_len, 32, generator=generator, dtype=torch.float64)
    query_weight = torch.randn(3, 32, 8, generator=generator, dtype=torch.float64)
    key_weight = torch.randn(3, 32, 8, generator=generator, dtype=torch.float64)
    expected = (
        torch.einsum("bqd,hdr->bhqr", queries, query_weight)
        @ torch.einsum("bkd,hdr->bhkr", keys, key_weight).transpose(-1, -2)
        / 8**0.5
    )
    torch.testing.assert_close(low_rank_position_bias(queries, keys, query_weight, key_weight), expected)
