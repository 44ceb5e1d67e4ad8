"""The one attention path shared by mathpe's decoder and swapped Hugging Face models.

A model calls ``build_pe_context`` once per forward: it derives positions (from ``position_ids``, the
attention mask, or the cache length), runs the PE's ``prepare`` (digit places, contextual positions), and
computes everything the layers share: rotary cos/sin, the additive embedding, or the bias folded with the
causal and padding masks into one float mask. Every layer then calls ``pe_attention``.

Cached decoding: the positions of cached keys and the PE's carried state live on the ``Cache`` object
(``mathpe_positions``, ``mathpe_state``), so a PE whose per-token inputs depend on earlier tokens stays exact
step by step, and beam search reorders them with ``reorder_pe_cache``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from mathpe.pe.base import PositionalEncoding
from mathpe.pe.rotary import apply_rotary


@dataclass
class PEContext:
    """What every attention layer needs from the PE for one forward.

    Attributes:
        pe: the model's PE module (shared by all layers).
        position_ids: (batch, seq) positions of this forward's tokens.
        extra: per-token inputs from ``pe.prepare`` (keyword arguments of embed / apply / bias).
        cos, sin: (batch, seq, rotary_dim) rotary tables in the activation dtype, for rotary PEs that do not
            depend on hidden states; None otherwise.
        embedding: (batch, seq, hidden) additive embedding, for additive PEs; None otherwise.
        attn_mask: float mask broadcastable to (batch, heads, q_len, k_len) holding the bias and the
            causal/padding masks, or None when SDPA's causal flag alone is exact.
        is_causal: pass ``is_causal=True`` to SDPA (no mask, no padding, q_len == k_len).
    """

    pe: PositionalEncoding
    position_ids: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    is_causal: bool = False


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, total_len) 0/1 mask -> (batch, total_len) positions counting real tokens only (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _deduplicate_rows(positions: torch.Tensor) -> torch.Tensor:
    """Return (1, len) when every batch row holds the same positions, so biases are not built per element."""
    if positions.shape[0] > 1 and torch.equal(positions, positions[:1].expand_as(positions)):
        return positions[:1]
    return positions


def build_pe_context(
    pe: PositionalEncoding,
    *,
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Cache | None = None,
) -> PEContext:
    """Compute positions, PE inputs and the attention mask once for a forward pass.

    Args:
        pe: the PE module.
        inputs_embeds: (batch, seq, hidden) embeddings of the new tokens (gives batch, seq, device, dtype).
        input_ids: (batch, seq) ids of the new tokens, or None (token-aware PEs then see no digits).
        attention_mask: (batch, past + seq) 0/1 mask over cached and new tokens, or None (all real).
        position_ids: (batch, seq) positions of the new tokens; derived from the mask or cache when None.
        cache: the KV cache of this sequence, or None.
    """
    batch, seq, _ = inputs_embeds.shape
    device, dtype = inputs_embeds.device, inputs_embeds.dtype
    past = cache.get_seq_length() if cache is not None else 0
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"mathpe expects a 2D (batch, length) attention mask, got shape {tuple(attention_mask.shape)}"
        )
    if attention_mask is not None and attention_mask.shape[-1] != past + seq:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[-1]} tokens but the cache holds {past} and the input {seq}"
        )

    if position_ids is None:
        if attention_mask is not None:
            position_ids = positions_from_mask(attention_mask)[:, past:]
        else:
            position_ids = torch.arange(past, past + seq, device=device).unsqueeze(0)
    position_ids = position_ids.to(device).expand(batch, seq)
    pe.check_positions(position_ids)

    previous_positions = getattr(cache, "mathpe_positions", None) if past else None
    key_positions = (
        position_ids if previous_positions is None else torch.cat([previous_positions, position_ids], 1)
    )
    new_mask = attention_mask[:, past:] if attention_mask is not None else None
    extra, state = pe.prepare(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=new_mask,
        state=getattr(cache, "mathpe_state", None) if past else None,
    )
    if cache is not None:
        cache.mathpe_positions = key_positions
        cache.mathpe_state = state

    context = PEContext(pe=pe, position_ids=position_ids, extra=extra)
    if pe.kind == "rotary" and not pe.uses_hidden_states:
        context.cos, context.sin = pe.cos_sin(position_ids, dtype, **extra)
    elif pe.kind == "additive":
        context.embedding = pe.embed(position_ids, input_ids, **extra).to(dtype)

    has_padding = attention_mask is not None and not bool(attention_mask.all())
    if pe.kind == "bias":
        bias = pe.bias(_deduplicate_rows(position_ids), _deduplicate_rows(key_positions), **extra)
        context.attn_mask = _mask_logits(bias, attention_mask if has_padding else None, past, seq).to(dtype)
    elif has_padding or (seq > 1 and past > 0):
        zeros = inputs_embeds.new_zeros(1, 1, seq, past + seq, dtype=torch.float32)
        context.attn_mask = _mask_logits(zeros, attention_mask if has_padding else None, past, seq).to(dtype)
    else:
        context.is_causal = seq > 1
    return context


def _mask_logits(
    bias: torch.Tensor, attention_mask: torch.Tensor | None, past: int, seq: int
) -> torch.Tensor:
    """Fill the bias (b, h, seq, past + seq) with the float32 minimum where causality or padding forbid.

    The minimum is finite, so a fully masked row (a left-pad query) gives a finite, ignored output.
    """
    device = bias.device
    query_index = torch.arange(past, past + seq, device=device)
    key_index = torch.arange(past + seq, device=device)
    allowed = key_index[None, :] <= query_index[:, None]  # (seq, past + seq)
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)


def pe_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: PEContext,
    *,
    cache: Cache | None,
    layer_idx: int,
    hidden_states: torch.Tensor | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention with the PE applied; caches the (rotated) keys and values.

    Args:
        query: (batch, heads, seq, head_dim).
        key, value: (batch, kv_heads, seq, head_dim); kv_heads divides heads (grouped-query attention).
        context: from ``build_pe_context`` for this forward.
        cache: the KV cache, or None.
        layer_idx: this layer's index in the cache.
        hidden_states: (batch, seq, hidden) input of this layer, for PEs with ``uses_hidden_states``.

    Returns:
        (batch, heads, seq, head_dim) attention output.
    """
    if context.cos is not None:
        query, key = apply_rotary(query, key, context.cos, context.sin)
    elif context.pe.kind == "rotary":
        query, key = context.pe.apply(
            query, key, context.position_ids, hidden_states=hidden_states, **context.extra
        )
    if cache is not None:
        key, value = cache.update(key, value, layer_idx)
    attn_mask = context.attn_mask
    if attn_mask is not None and attn_mask.dtype != query.dtype:
        attn_mask = attn_mask.to(query.dtype)
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        is_causal=context.is_causal and attn_mask is None,
        dropout_p=dropout,
        scale=scale,
        enable_gqa=key.shape[1] != query.shape[1],
    )


def reorder_pe_cache(cache: Any, beam_index: torch.Tensor) -> Any:
    """Reorder a cache's batch rows (beam search), the PE's positions and state included."""
    cache.reorder_cache(beam_index)
    positions = getattr(cache, "mathpe_positions", None)
    if positions is not None:
        cache.mathpe_positions = positions.index_select(0, beam_index.to(positions.device))
    state = getattr(cache, "mathpe_state", None)
    if state is not None:
        cache.mathpe_state = PositionalEncoding.reorder_state(state, beam_index)
    return cache
