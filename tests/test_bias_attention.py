"""The blockwise bias attention (``mathpe.bias_attention``) against SDPA with the PE's dense float mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from helpers import perturb_parameters
from mathpe import attention, bias_attention
from mathpe.attention import build_pe_context, pe_attention, positions_from_mask
from mathpe.model.configuration import preset_config
from mathpe.model.modeling import MathPEForCausalLM
from mathpe.pe import PEShape, build_pe, list_pes, pe_class

HEADS, HEAD_DIM, HIDDEN = 4, 8, 32
#: Every bias PE of the registry with its default options, and the variants whose bias is computed otherwise.
BIAS_PES = [(name, {}) for name in list_pes() if pe_class(name).kind == "bias"] + [
    ("diet", {"variant": "rel", "max_relative_distance": 8}),
    ("fire", {"init_L": 6.0}),  # normalised by the query position, not by L, beyond position 6
    ("t5_relative", {"num_buckets": 8, "max_distance": 12}),
]
IDS = [f"{name}-{'-'.join(map(str, options.values()))}" if options else name for name, options in BIAS_PES]


def make_pe(name: str, options: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    pe = build_pe(name, PEShape(HEADS, HEAD_DIM, HIDDEN, 64), **options)
    perturb_parameters(pe, 0.3)
    return pe.to(dtype)


def reference(
    pe: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """SDPA with the whole bias of ``pe.bias`` and the causal and padding masks as one float mask (mathpe's path
    before the blockwise one); ``attention_mask`` (batch, past + seq) covers cached and new tokens."""
    seq, total = query.shape[2], key.shape[2]
    positions = positions_from_mask(attention_mask)
    bias = pe.bias(positions[:, total - seq :], positions)
    causal = torch.ones(seq, total, dtype=torch.bool).tril(total - seq)
    allowed = causal & attention_mask.bool()[:, None, None, :]
    mask = bias.masked_fill(~allowed, torch.finfo(torch.float32).min).to(query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)


def blockwise(
    pe: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    past: int,
) -> torch.Tensor:
    """mathpe's attention path, the first ``past`` keys and values coming from a cache."""
    batch, _, seq, _ = query.shape
    cache = None
    if past:
        cache = DynamicCache()
        cache.update(key[:, :, :past].detach(), value[:, :, :past].detach(), 0)
    context = build_pe_context(
        pe, inputs_embeds=query.new_zeros(batch, seq, HIDDEN), attention_mask=attention_mask, cache=cache
    )
    assert context.block_bias is not None and context.attn_mask is None
    return pe_attention(query, key[:, :, past:], value[:, :, past:], context, cache=cache, layer_idx=0)[0]


CASES = {
    # name: (batch, kv_heads, past, seq, left pads of each row)
    "causal": (2, HEADS, 0, 37, (0, 0)),  # positions are indices: sliding windows of a distance table
    "left_padding": (3, HEADS, 0, 29, (0, 5, 11)),
    "prefill_after_cache": (2, HEADS, 9, 21, (0, 0)),
    "padded_prefill_after_cache": (2, HEADS, 9, 21, (0, 4)),
    "grouped_query": (2, 2, 0, 33, (0, 0)),
    "padded_grouped_query": (2, 2, 0, 33, (3, 0)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("name", "options"), BIAS_PES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blockwise_equals_dense_mask_with_gradients(
    name: str, options: dict, case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output and gradients of q, k, v and every PE parameter, several query blocks per sequence."""
    monkeypatch.setattr(bias_attention, "MAX_BLOCK", 8)  # the test sizes span several blocks
    monkeypatch.setattr(bias_attention, "MIN_BLOCK", 8)
    batch, kv_heads, past, seq, pads = CASES[case]
    pe = make_pe(name, options, dtype)
    torch.manual_seed(1)
    query = torch.randn(batch, HEADS, seq, HEAD_DIM, dtype=dtype, requires_grad=True)
    key, value = (
        torch.randn(batch, kv_heads, past + seq, HEAD_DIM, dtype=dtype, requires_grad=True) for _ in range(2)
    )
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long)
    for row, pad in enumerate(pads):
        attention_mask[row, :pad] = 0
    grad_output = torch.randn(batch, HEADS, seq, HEAD_DIM, dtype=dtype)
    leaves = [query, key, value, *(p for p in pe.parameters() if p.requires_grad)]
    # float64: the attention math is float64 on both paths, the bias float32 (the PE contract), which DIET-ABS
    # associates differently block by block: float32 rounding of the bias is all that may differ.
    tolerance = 1e-5 if dtype == torch.float32 else 1e-6

    # The cached keys and values are constants to the blockwise path (the cache holds them detached).
    cached_key, cached_value = (
        torch.cat([tensor[:, :, :past].detach(), tensor[:, :, past:]], 2) for tensor in (key, value)
    )
    expected = reference(pe, query, cached_key, cached_value, attention_mask)
    expected_grads = torch.autograd.grad(expected, leaves, grad_output)
    got = blockwise(pe, query, key, value, attention_mask, past)
    got_grads = torch.autograd.grad(got, leaves, grad_output)

    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    for index, (got_grad, expected_grad) in enumerate(zip(got_grads, expected_grads, strict=True)):
        # PE parameter gradients pass through the float32 bias math (the PE contract) on both paths, summed
        # over every (query, key, head, row) in another order: float32 rounding of ~10^4 terms of size ~1
        # (FIRE's scalar threshold: 3e-5 apart on an AMD EPYC, 4e-6 on a Xeon), far below a wrong gradient.
        close = tolerance if index < 3 else 1e-4
        torch.testing.assert_close(got_grad, expected_grad, atol=close, rtol=close, msg=f"leaf {index}")
    assert any(grad.abs().max() > 0 for grad in got_grads[3:])  # the bias gradient is exercised


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(("name", "options"), BIAS_PES, ids=IDS)
def test_model_forward_backward_equals_dense_mask_path(
    name: str, options: dict, padded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole decoder: loss and every parameter gradient as through the float-mask path."""
    torch.manual_seed(0)
    config = preset_config(
        "tiny", pe=name, pe_options=options, max_position_embeddings=64, num_heads=HEADS, hidden_size=HIDDEN
    )
    model = MathPEForCausalLM(config)
    perturb_parameters(model.model.pe, 0.3)
    input_ids = torch.randint(0, config.vocab_size, (2, 24))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :7] = 0 if padded else 1

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    calls = []
    apply = bias_attention.BlockwiseBiasAttention.apply
    monkeypatch.setattr(
        bias_attention.BlockwiseBiasAttention, "apply", lambda *args: calls.append(1) or apply(*args)
    )
    loss, grads = loss_and_grads()
    assert len(calls) == config.num_layers
    monkeypatch.setattr(attention, "_bias_needs_grad", lambda pe, extra: False)  # the float-mask path
    expected_loss, expected_grads = loss_and_grads()
    assert len(calls) == config.num_layers
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(expected_grads) == sum(1 for p in model.parameters() if p.requires_grad)
    for got, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["alibi", "fire"])
def test_no_layer_saves_a_quadratic_tensor(name: str) -> None:
    """What autograd keeps for backward: nothing of heads x L x L (the float-mask path keeps one per layer)."""
    seq = 96  # heads x L x L outgrows every (batch, L, hidden or vocab) activation of the tiny model
    config = preset_config("tiny", pe=name, max_position_embeddings=seq, num_heads=HEADS, hidden_size=HIDDEN)
    model = MathPEForCausalLM(config)
    input_ids = torch.randint(0, config.vocab_size, (2, seq))
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()  # its recomputation of a block holds block-sized tensors for a moment, and keeps none
    assert saved and max(saved) < HEADS * seq * seq


def test_float_mask_path_without_gradient_or_with_dropout() -> None:
    """No gradient (inference) or attention dropout: one float mask for all layers, as before."""
    pe = make_pe("alibi", {})
    embeddings = torch.zeros(1, 10, HIDDEN)
    with torch.no_grad():
        context = build_pe_context(pe, inputs_embeds=embeddings)
    assert context.block_bias is None and context.attn_mask is not None
    context = build_pe_context(pe, inputs_embeds=embeddings)
    assert context.block_bias is not None
    query = torch.randn(1, HEADS, 10, HEAD_DIM)
    pe_attention(query, query, query, context, cache=None, layer_idx=0, dropout=0.5)
    expected = pe.bias(torch.arange(10)[None], torch.arange(10)[None]).masked_fill(
        ~torch.ones(10, 10, dtype=torch.bool).tril(), torch.finfo(torch.float32).min
    )
    torch.testing.assert_close(context.attn_mask, expected, atol=1e-6, rtol=1e-6)


DISTANCE_PES = [(name, options) for name, options in BIAS_PES if make_pe(name, options).distance_only()]


@pytest.mark.parametrize(
    ("name", "options"),
    DISTANCE_PES,
    ids=[f"{n}-{'-'.join(map(str, o.values()))}" if o else n for n, o in DISTANCE_PES],
)
@pytest.mark.parametrize("case", list(CASES))
def test_flex_score_mod_equals_dense_mask_forward(name: str, options: dict, case: str) -> None:
    """flex_attention's score_mod and block mask (forward: flex_attention has no CPU backward) on real rows."""
    flex_attention = pytest.importorskip("torch.nn.attention.flex_attention").flex_attention
    batch, kv_heads, past, seq, pads = CASES[case]
    pe = make_pe(name, options)
    torch.manual_seed(1)
    query = torch.randn(batch, HEADS, seq, HEAD_DIM)
    key, value = (torch.randn(batch, kv_heads, past + seq, HEAD_DIM) for _ in range(2))
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long)
    for row, pad in enumerate(pads):
        attention_mask[row, :pad] = 0
    cache = DynamicCache() if past else None
    if cache is not None:
        cache.update(key[:, :, :past], value[:, :, :past], 0)
    context = build_pe_context(
        pe, inputs_embeds=query.new_zeros(batch, seq, HIDDEN), attention_mask=attention_mask, cache=cache
    )
    assert context.block_bias is not None
    with torch.no_grad():
        got = bias_attention.flex_bias_attention(
            query, key, value, context.block_bias, HEAD_DIM**-0.5, flex_attention
        )
        expected = reference(pe, query, key, value, attention_mask)
    real = attention_mask[:, past:].bool()  # fully masked (left-pad) queries differ by design
    torch.testing.assert_close(
        got.transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-5, rtol=1e-5
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention's backward needs CUDA")
@pytest.mark.parametrize(("name", "options"), DISTANCE_PES)
def test_flex_path_on_cuda_with_gradients(name: str, options: dict) -> None:
    """On CUDA the dispatch takes compiled flex_attention: output and gradients as the float-mask path."""
    pe = make_pe(name, options).cuda()
    torch.manual_seed(1)
    query, key, value = (
        torch.randn(2, HEADS, 64, HEAD_DIM, device="cuda", requires_grad=True) for _ in range(3)
    )
    attention_mask = torch.ones(2, 64, dtype=torch.long, device="cuda")
    attention_mask[1, :9] = 0
    leaves = [query, key, value, *(p for p in pe.parameters() if p.requires_grad)]
    grad_output = torch.randn_like(query) * attention_mask[:, None, :, None]  # pad rows differ by design
    got = blockwise(pe, query, key, value, attention_mask, 0)
    expected = reference(pe, query, key, value, attention_mask)
    for got_grad, expected_grad in zip(
        torch.autograd.grad(got, leaves, grad_output),
        torch.autograd.grad(expected, leaves, grad_output),
        strict=True,
    ):
        torch.testing.assert_close(got_grad, expected_grad, atol=1e-4, rtol=1e-4)
