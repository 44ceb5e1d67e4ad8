"""The one attention path shared by mathpe's decoder and swapped Hugging Face models.

A model calls ``build_pe_context`` once per forward: it derives positions (from ``position_ids``, the
attention mask, or the cache length), runs the PE's ``prepare`` (digit places, contextual positions), and
computes everything the layers share: rotary cos/sin, the additive embedding, or the bias folded with the
causal and padding masks into one float mask. Every layer then calls ``pe_attention``.

Bias PEs: when the bias needs a gradient (a trainable bias in a training forward), a float mask would send SDPA to
its math kernel, which keeps each layer's (batch, heads, q_len, k_len) probabilities for backward. Then the context
holds the PE's ``BiasBlocks`` instead (``context.block_bias``) and the layers run ``mathpe.bias_attention``, which
makes the bias one block of queries at a time and recomputes it in backward. Without a gradient (inference,
decoding one token, a frozen bias) SDPA's fused kernels take the float mask, built once for all layers.

Cached decoding: the positions of cached keys and the PE's carried state live on the ``Cache`` object (a
``PECacheRecord`` as ``cache.mathpe_record``), so a PE whose per-token inputs depend on earlier tokens stays exact
step by step, and beam search reorders them with ``reorder_pe_cache``. The record is per token: whatever shortens
the cache (``Cache.crop`` after rejected candidates in assisted decoding, by the target and the assistant model
alike) is followed at the next forward, which cuts the record to the cache's length and resumes from the PE state
at the last kept token (``PositionalEncoding.token_states``). A cache holding tokens the PE never saw (a PEFT
prefix) gets their positions from the attention mask and no PE state.

Attention weights: SDPA computes no probabilities, so when they are asked for (``output_attentions``) or the
model's ``attn_implementation`` is ``"eager"``, ``pe_attention`` takes an explicit softmax path over the same
logits, PE bias and masks included, and returns the probabilities (batch, heads, q_len, k_len).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from mathpe.bias_attention import BlockBias, block_bias_attention, mask_logits
from mathpe.compat import attn_implementation, reentrant_checkpointing
from mathpe.pe.base import PositionalEncoding
from mathpe.pe.randomized import randomized_positions
from mathpe.pe.rotary import apply_rotary


@dataclass
class PEContext:
    """What every attention layer needs from the PE for one forward.

    Attributes:
        pe: the model's PE module (shared by all layers).
        position_ids: (batch, seq) positions of this forward's tokens.
        extra: per-token inputs from ``pe.prepare`` (keyword arguments of embed / apply / bias).
        cos, sin: (batch, seq, rotary_dim) rotary tables in the activation dtype, for rotary PEs; None
            otherwise.
        embedding: (batch, seq, hidden) additive embedding, for additive PEs; None otherwise.
        attn_mask: float mask broadcastable to (batch, heads, q_len, k_len) holding the bias and the
            causal/padding masks, or None when SDPA's causal flag alone is exact.
        is_causal: pass ``is_causal=True`` to SDPA (no mask, no padding, q_len == k_len).
        output_attentions: take the explicit path and return the attention probabilities.
        block_bias: a bias PE's bias made block by block (``mathpe.bias_attention``) instead of ``attn_mask``, or
            None.
    """

    pe: PositionalEncoding
    position_ids: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    is_causal: bool = False
    output_attentions: bool = False
    block_bias: BlockBias | None = None


#: Attribute of a ``Cache`` holding the PE's ``PECacheRecord``.
CACHE_RECORD = "mathpe_record"


def _map_state(function: Any, state: Any) -> Any:
    """Apply ``function`` to every tensor of a PE state (a tensor, a dict of states, or None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return function(state)
    if isinstance(state, dict):
        return {key: _map_state(function, value) for key, value in state.items()}
    raise TypeError(f"unsupported PE state of type {type(state).__name__}")


@dataclass
class PECacheRecord:
    """What the PE keeps about the cached tokens of one generation.

    Attributes:
        positions: (batch, cached) positions of every cached token.
        unseen: leading cached tokens the PE never saw (a PEFT prefix); they have no PE state.
        state: the PE's carried state after the last cached token (what ``prepare`` returned), or None.
        token_states: the state after each seen token, tensors (batch, cached - unseen, ...)
            (``PositionalEncoding.token_states``), or None when the PE carries no state or cannot give it per token.
    """

    positions: torch.Tensor
    unseen: int = 0
    state: Any = None
    token_states: Any = None

    def truncated(self, length: int, pe: PositionalEncoding) -> PECacheRecord:
        """The record of the first ``length`` cached tokens (the cache was cropped to ``length``)."""
        kept_states = length - self.unseen  # seen tokens that stay
        if kept_states <= 0:
            return PECacheRecord(self.positions[:, :length], unseen=length)
        if self.state is not None and self.token_states is None:
            raise ValueError(
                f"the cache was cropped, but PE {pe.registry_name!r} carries state across cached steps and defines "
                "no token_states to rewind it"
            )
        token_states = _map_state(lambda tensor: tensor[:, :kept_states], self.token_states)
        return PECacheRecord(
            self.positions[:, :length],
            unseen=self.unseen,
            state=_map_state(lambda tensor: tensor[:, -1], token_states),
            token_states=token_states,
        )

    def extended(self, positions: torch.Tensor, state: Any, token_states: Any) -> PECacheRecord:
        """The record after a forward over new tokens at ``positions`` (batch, seq) leaving ``state``."""
        if self.positions.shape[1] > self.unseen:  # earlier seen tokens: both parts need per-token states
            both = self.token_states is not None and token_states is not None
            token_states = _concat_states(self.token_states, token_states) if both else None
        return PECacheRecord(
            torch.cat([self.positions, positions], 1),
            unseen=self.unseen,
            state=state,
            token_states=token_states,
        )


def _concat_states(first: Any, second: Any) -> Any:
    """Concatenate two per-token states along the token dim."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second.to(first.device)], 1)
    return {key: _concat_states(first[key], second[key]) for key in first}


def _cached_record(
    cache: Cache,
    past: int,
    attention_mask: torch.Tensor | None,
    batch: int,
    device: torch.device,
    pe: PositionalEncoding,
) -> PECacheRecord:
    """The PE's record of the ``past`` cached tokens, cut to the cache's length if the cache was cropped."""
    record = getattr(cache, CACHE_RECORD, None)
    if record is None or record.positions.shape[1] < past:
        # Tokens the PE never saw (a PEFT prefix): positions from the mask, as for any token, and no state.
        if attention_mask is not None:
            positions = positions_from_mask(attention_mask)[:, :past]
        else:
            positions = torch.arange(past, device=device).unsqueeze(0)
        return PECacheRecord(positions.to(device).expand(batch, past), unseen=past)
    if record.positions.shape[1] > past:
        record = record.truncated(past, pe)
    return record


def check_cache(cache: Cache | None) -> None:
    """Refuse caches mathpe cannot serve, with one line: static (compileable) caches have a fixed length."""
    if cache is not None and cache.is_compileable:
        raise ValueError(
            f"mathpe models do not support a static cache ({type(cache).__name__}, e.g. "
            "cache_implementation='static'); use the default dynamic cache"
        )


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
    output_attentions: bool = False,
    randomized_max_position: int | None = None,
) -> PEContext:
    """Compute positions, PE inputs and the attention mask once for a forward pass.

    Args:
        pe: the PE module.
        inputs_embeds: (batch, seq, hidden) embeddings of the new tokens (gives batch, seq, device, dtype).
        input_ids: (batch, seq) ids of the new tokens, or None (token-aware PEs then see no digits).
        attention_mask: (batch, past + seq) 0/1 mask over cached and new tokens, or None (all real).
        position_ids: (batch, seq) positions of the new tokens; derived from the mask or cache when None.
        cache: the KV cache of this sequence, or None.
        output_attentions: attention layers take the explicit path and return their probabilities.
        randomized_max_position: in a training forward without a cache, replace the positions by a sorted
            random subset of ``0..randomized_max_position-1`` (randomized positions, Ruoss et al. 2023), so
            positions of longer test sequences are trained; None: positions as they are.
    """
    check_cache(cache)
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
    if pe.uses_token_ids and input_ids is None:
        warnings.warn(
            f"PE {pe.registry_name!r} reads token ids but got inputs_embeds without input_ids: it treats no token "
            "as a digit (pass input_ids for the same outputs as from ids)",
            stacklevel=3,
        )

    record = _cached_record(cache, past, attention_mask, batch, device, pe) if past else None
    if position_ids is None:
        if attention_mask is not None:
            position_ids = positions_from_mask(attention_mask)[:, past:]
        else:
            position_ids = torch.arange(past, past + seq, device=device).unsqueeze(0)
    position_ids = position_ids.to(device).expand(batch, seq)
    if randomized_max_position is not None and pe.training and not past:
        position_ids = randomized_positions(position_ids, randomized_max_position)
    pe.check_positions(position_ids)

    key_positions = position_ids if record is None else torch.cat([record.positions, position_ids], 1)
    new_mask = attention_mask[:, past:] if attention_mask is not None else None
    extra, state = pe.prepare(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=new_mask,
        state=None if record is None else record.state,
    )
    if cache is not None:
        start = record if record is not None else PECacheRecord(position_ids[:, :0])
        setattr(cache, CACHE_RECORD, start.extended(position_ids, state, pe.token_states(extra, state)))

    context = PEContext(pe=pe, position_ids=position_ids, extra=extra, output_attentions=output_attentions)
    if pe.kind == "rotary":
        context.cos, context.sin = pe.cos_sin(position_ids, dtype, **extra)
    elif pe.kind == "additive":
        context.embedding = pe.embed(position_ids, input_ids, **extra).to(dtype)

    has_padding = attention_mask is not None and not bool(attention_mask.all())
    if pe.kind == "bias":
        queries, keys = _deduplicate_rows(position_ids), _deduplicate_rows(key_positions)
        padding = attention_mask if has_padding else None
        if seq > 1 and not output_attentions and _bias_needs_grad(pe, extra):
            context.block_bias = BlockBias(
                pe.bias_blocks(queries, keys, **extra), queries, keys, padding, past
            )
        else:
            context.attn_mask = mask_logits(pe.bias(queries, keys, **extra), padding, past).to(dtype)
    elif has_padding or (seq > 1 and past > 0):
        zeros = inputs_embeds.new_zeros(1, 1, seq, past + seq, dtype=torch.float32)
        context.attn_mask = mask_logits(zeros, attention_mask if has_padding else None, past).to(dtype)
    else:
        context.is_causal = seq > 1
    return context


def _bias_needs_grad(pe: PositionalEncoding, extra: dict[str, torch.Tensor]) -> bool:
    """True when this forward differentiates the PE's bias (trainable weights or inputs, grad enabled)."""
    tensors = [*pe.parameters(), *extra.values()]
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def pe_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: PEContext,
    *,
    cache: Cache | None,
    layer_idx: int,
    dropout: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal attention with the PE applied; caches the (rotated) keys and values.

    Args:
        query: (batch, heads, seq, head_dim).
        key, value: (batch, kv_heads, seq, head_dim); kv_heads divides heads (grouped-query attention).
        context: from ``build_pe_context`` for this forward.
        cache: the KV cache, or None.
        layer_idx: this layer's index in the cache.

    Returns:
        ``(output, weights)``: (batch, heads, seq, head_dim) attention output, and the attention probabilities
        (batch, heads, seq, past + seq) when ``context.output_attentions`` (None otherwise).
    """
    if context.cos is not None:
        query, key = apply_rotary(query, key, context.cos, context.sin)
    if cache is not None:
        key, value = cache.update(key, value, layer_idx)
    if context.block_bias is not None:
        if not dropout:
            return block_bias_attention(query, key, value, context.block_bias, scale), None
        # The blockwise path draws no dropout masks: with attention dropout the layers share one float mask.
        if context.attn_mask is None:
            context.attn_mask = context.block_bias.dense().to(query.dtype)
    attn_mask = context.attn_mask
    if context.output_attentions:
        return explicit_attention(
            query, key, value, attn_mask, is_causal=context.is_causal, dropout=dropout, scale=scale
        )
    if attn_mask is not None and attn_mask.dtype != query.dtype:
        attn_mask = attn_mask.to(query.dtype)
    output = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        is_causal=context.is_causal and attn_mask is None,
        dropout_p=dropout,
        scale=scale,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output, None


def explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    *,
    is_causal: bool,
    dropout: float = 0.0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What SDPA computes, written out so the probabilities can be returned (as transformers' eager attention).

    Logits in the activation dtype, mask added and softmax taken in float32, probabilities cast back.

    Returns:
        (batch, heads, q_len, head_dim) output and (batch, heads, q_len, k_len) probabilities.
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:  # grouped-query attention: each key/value head serves heads // kv_heads query heads
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = (query @ key.transpose(-1, -2) * scale).float()
    if attn_mask is not None:
        # The float32 minimum of a masked entry becomes -inf in bfloat16: back to finite, so a fully masked row
        # (a left-pad query) stays finite, as with SDPA.
        logits = logits + attn_mask.float().clamp(min=torch.finfo(torch.float32).min)
    elif is_causal:
        q_len, k_len = logits.shape[-2:]
        logits = mask_logits(logits, None, k_len - q_len)
    weights = torch.softmax(logits, dim=-1).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return weights @ value, weights


def wants_attention_weights(config: Any, kwargs: dict[str, Any]) -> bool:
    """True when a forward must compute attention explicitly: weights asked for, or eager attention configured."""
    output_attentions = kwargs.get("output_attentions")
    if output_attentions is None:
        output_attentions = config.output_attentions
    return bool(output_attentions) or attn_implementation(config) == "eager"


def check_reentrant_checkpointing(model: torch.nn.Module, context: PEContext) -> None:
    """Refuse reentrant gradient checkpointing when it cannot work, with one line instead of torch's error.

    Reentrant checkpointing backpropagates each layer separately, so it cannot go twice through tables that all
    layers share and that depend on trainable PE weights (a bias, cos/sin or per-token PE inputs built once per
    forward); ``model`` is the base model whose layers are checkpointed.
    """
    if not reentrant_checkpointing(model):
        return
    shared = [context.cos, context.sin, context.attn_mask, *context.extra.values()]
    if context.block_bias is not None:  # what is built from the PE's weights; the weights themselves are fine
        shared += [tensor for tensor in context.block_bias.blocks.inputs if tensor.grad_fn is not None]
    if any(isinstance(tensor, torch.Tensor) and tensor.requires_grad for tensor in shared):
        raise ValueError(
            f"PE {context.pe.registry_name!r} with trainable weights needs non-reentrant gradient checkpointing; "
            "enable it without use_reentrant=True (transformers' default is use_reentrant=False)"
        )


def reorder_pe_cache(cache: Any, beam_index: torch.Tensor) -> Any:
    """Reorder a cache's batch rows (beam search), the PE's positions and state included."""
    cache.reorder_cache(beam_index)
    record = getattr(cache, CACHE_RECORD, None)
    if record is not None:
        setattr(
            cache,
            CACHE_RECORD,
            PECacheRecord(
                record.positions.index_select(0, beam_index.to(record.positions.device)),
                unseen=record.unseen,
                state=PositionalEncoding.reorder_state(record.state, beam_index),
                token_states=PositionalEncoding.reorder_state(record.token_states, beam_index),
            ),
        )
    return cache
