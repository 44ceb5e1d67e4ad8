"""Checks every PE in the registry passes, whatever its kind: interface, lengths, dtypes, devices, positions."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES
from helpers import DIGIT_IDS, default_pe_options, perturb_parameters
from mathpe.pe import KINDS, PEShape, build_pe, list_pes, pe_options
from mathpe.train.compare import FOUNDING_PES, LENGTH_STUDY_PES

HEADS, HEAD_DIM, HIDDEN, MAX_POSITION = 4, 16, 64, 64
VOCAB = 20


def make_pe(name: str) -> torch.nn.Module:
    pe = build_pe(
        name,
        PEShape(HEADS, HEAD_DIM, HIDDEN, MAX_POSITION),
        **default_pe_options(name),
    )
    perturb_parameters(pe)
    return pe.eval()


def run_pe(pe, positions: torch.Tensor, input_ids: torch.Tensor, dtype: torch.dtype, seed: int = 0):
    """The PE's output for one forward, whatever its kind: None, an embedding, rotated (q, k) or a bias."""
    batch, seq = positions.shape
    device = positions.device
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, seq, HIDDEN, generator=generator).to(device, dtype)
    extra, _ = pe.prepare(input_ids=input_ids, inputs_embeds=embeds, attention_mask=None, state=None)
    if pe.kind == "none":
        return None
    if pe.kind == "additive":
        return pe.embed(positions, input_ids, **extra)
    if pe.kind == "bias":
        return pe.bias(positions, positions, **extra)
    q = torch.randn(batch, HEADS, seq, HEAD_DIM, generator=generator).to(device, dtype)
    k = torch.randn(batch, HEADS, seq, HEAD_DIM, generator=generator).to(device, dtype)
    return torch.stack(pe.apply(q, k, positions, **extra))


def token_ids(batch: int, seq: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Ids mixing digits and other tokens, so digit-aware PEs see numbers of several lengths."""
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)


def test_registry_holds_the_founding_methods_and_baselines():
    assert set(FOUNDING_PES) <= set(LENGTH_STUDY_PES)
    assert sorted(LENGTH_STUDY_PES) == list_pes()  # the length studies compare every method
    assert list_pes() == sorted(list_pes())  # no display order: presets and reports choose their own


def test_unknown_name_and_option_give_clear_errors():
    with pytest.raises(ValueError, match=r"unknown PE 'bogus'; choose one of: abacus, alibi, "):
        build_pe("bogus", PEShape(1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\] for PE 'rope'; allowed: base="):
        build_pe("rope", PEShape(1, 8, 8, 8), colour=1)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        build_pe("alibi", PEShape(0, 8, 8, 8))


@pytest.mark.parametrize("name", list_pes())
def test_kind_and_method(name: str):
    pe = make_pe(name)
    assert pe.kind in KINDS
    method = {"additive": "embed", "rotary": "apply", "bias": "bias", "none": "prepare"}[pe.kind]
    assert callable(getattr(pe, method))
    assert isinstance(pe_options(name), dict)


@pytest.mark.parametrize("name", list_pes())
@pytest.mark.parametrize("seq", [1, 7, 8 * MAX_POSITION, 4096])
def test_shapes_and_lengths(name: str, seq: int):
    pe = make_pe(name)
    positions = torch.arange(seq).unsqueeze(0)
    if pe.max_supported_position is not None and seq > pe.max_supported_position:
        with pytest.raises(ValueError, match=f"got position {seq - 1}"):
            pe.check_positions(positions)
        return
    if seq == 4096 and pe.kind == "bias":
        positions = positions[:, :2048]  # (1, 4, 4096, 4096) float32 biases are 256 MB; 2048 keeps it quick
        seq = 2048
    out = run_pe(pe, positions, token_ids(1, seq), torch.float32)
    expected = {
        "none": None,
        "additive": (1, seq, HIDDEN),
        "rotary": (2, 1, HEADS, seq, HEAD_DIM),
        "bias": (1, HEADS, seq, seq),
    }[pe.kind]
    if expected is None:
        assert out is None
    else:
        assert tuple(out.shape) == expected
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_pes())
def test_float64_agrees_with_float32(name: str):
    """A float64 module on float64 inputs runs (PE math is float32 or wider) and agrees with float32."""
    pe = make_pe(name)
    positions, ids = torch.arange(40).unsqueeze(0).repeat(2, 1), token_ids(2, 40)
    out32 = run_pe(pe, positions, ids, torch.float32)
    out64 = run_pe(pe.double(), positions, ids, torch.float64)
    if out32 is not None:
        assert out64.dtype in (torch.float32, torch.float64)
        torch.testing.assert_close(out64.float(), out32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_pes())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close(name: str, dtype: torch.dtype):
    pe = make_pe(name)
    positions, ids = torch.arange(300).unsqueeze(0), token_ids(1, 300)
    if pe.max_supported_position is not None:
        positions, ids = positions[:, :MAX_POSITION], ids[:, :MAX_POSITION]
    reference = run_pe(pe, positions, ids, torch.float32)
    out = run_pe(pe.to(dtype), positions, ids, dtype)
    if reference is not None:
        assert torch.isfinite(out).all()
        tolerance = 2e-2 if dtype == torch.float16 else 8e-2
        scale = reference.abs().max().clamp(min=1.0)
        assert (out.float() - reference).abs().max() <= tolerance * scale


@pytest.mark.parametrize("name", list_pes())
def test_positions_are_honoured_not_assumed(name: str):
    """The PE at positions k..n-1 equals the tail of the PE at 0..n-1 (absolute methods, RoPE rotations)."""
    pe = make_pe(name)
    if pe.uses_token_ids or pe.kind == "none":
        pytest.skip("token dependent inputs are compared through the model's cached decoding")
    n, k = 48, 30
    ids = token_ids(1, n)
    full = run_pe(pe, torch.arange(n).unsqueeze(0), ids, torch.float32)
    if pe.kind == "bias":
        tail = pe.bias(torch.arange(k, n).unsqueeze(0), torch.arange(n).unsqueeze(0))
        torch.testing.assert_close(tail, full[:, :, k:, :])
    elif pe.kind == "additive":
        tail = pe.embed(torch.arange(k, n).unsqueeze(0), ids[:, k:])
        torch.testing.assert_close(tail, full[:, k:])
    else:
        q, k_ = torch.randn(2, 1, HEADS, n, HEAD_DIM).unbind(0)
        full = torch.stack(pe.apply(q, k_, torch.arange(n).unsqueeze(0)))
        tail = torch.stack(pe.apply(q[:, :, k:], k_[:, :, k:], torch.arange(k, n).unsqueeze(0)))
        torch.testing.assert_close(tail, full[:, :, :, k:])


@pytest.mark.parametrize("name", list_pes())
def test_state_moves_with_to_and_nothing_is_made_on_a_fixed_device(name: str):
    """On the meta device every op fails if a tensor was created on the CPU in the forward pass."""
    pe = make_pe(name).to("meta")
    assert all(t.device.type == "meta" for t in [*pe.parameters(), *pe.buffers()])
    positions = torch.arange(16, device="meta").unsqueeze(0)
    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    if pe.max_supported_position is None and not pe.uses_token_ids:
        out = run_pe(pe, positions, ids, torch.float32)
        assert out is None or out.device.type == "meta"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_pes())
def test_runs_on_device(name: str, device: str):
    pe = make_pe(name).to(device)
    positions = torch.arange(33, device=device).unsqueeze(0)
    out = run_pe(pe, positions, token_ids(1, 33, device), torch.float32)
    assert out is None or out.device.type == device


@pytest.mark.parametrize("name", [n for n in list_pes() if "digit_token_ids" in pe_options(n)])
def test_digit_aware_pes_carry_state_across_chunks(name: str):
    """prepare() on a sequence split in two chunks, with the carried state, equals prepare() on the whole."""
    pe = make_pe(name)
    ids = torch.tensor(
        [[DIGIT_IDS[1], DIGIT_IDS[2], 0, DIGIT_IDS[3], DIGIT_IDS[4], DIGIT_IDS[5], 1, DIGIT_IDS[0]]]
    )
    embeds = torch.randn(1, ids.shape[1], HIDDEN)
    full, _ = pe.prepare(input_ids=ids, inputs_embeds=embeds, attention_mask=None, state=None)
    for split in range(1, ids.shape[1]):
        head, state = pe.prepare(
            input_ids=ids[:, :split], inputs_embeds=embeds[:, :split], attention_mask=None
        )
        tail, _ = pe.prepare(
            input_ids=ids[:, split:], inputs_embeds=embeds[:, split:], attention_mask=None, state=state
        )
        for key in full:
            torch.testing.assert_close(torch.cat([head[key], tail[key]], 1), full[key])


@pytest.mark.parametrize("name", list_pes())
def test_all_state_is_in_the_state_dict(name: str):
    """Buffers are persistent: transformers 5 leaves non-persistent ones uninitialised when loading."""
    pe = make_pe(name)
    assert {buffer_name for buffer_name, _ in pe.named_buffers()} <= set(pe.state_dict())
