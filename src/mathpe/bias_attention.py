"""Attention with a trainable PE bias that keeps no (batch, heads, q_len, k_len) tensor per layer.

A float mask that requires grad sends SDPA to its math kernel, which keeps every layer's attention
probabilities for backward. Here the bias is made block by block of queries from the PE's ``BiasBlocks``
(``mathpe.pe.bias``): on the CPU (and as the generic path) ``BlockwiseBiasAttention`` computes logits, bias,
masks and softmax one query block at a time, keeps only q, k, v and the output, and in backward recomputes
each block (FlashAttention's ``dS = P * (dP - rowsum(dO * O))``), sending ``dS`` through the block's bias into
the PE (``torch.autograd.grad``). A block holds every key, so its softmax is complete: backward recomputes the
probabilities with ``torch.softmax`` instead of keeping per-row statistics (``torch.exp`` of the masked entries'
huge negative logits runs a slow path on the CPU, softmax does not). On CUDA a PE whose bias depends on ``i - j``
alone runs through ``flex_attention`` with a ``score_mod`` that indexes the PE's distance table.

Both agree with the float-mask path up to float rounding, with one exception: a query whose every key is masked
(a left-pad query) gets the mean of all values, as with SDPA, on the CPU path, and zeros from ``flex_attention``;
such rows are padding and never read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mathpe.pe.bias import BiasBlocks

#: Elements (batch x heads x queries x keys) of one block's logits: a few such float32 tensors are alive at
#: once, so this bounds the path's temporary memory (8 MiB each) while blocks stay large enough for fast matmuls.
BLOCK_ELEMENTS = 2**21
#: Bounds of the queries per block.
MIN_BLOCK, MAX_BLOCK = 16, 256


def mask_logits(bias: torch.Tensor, attention_mask: torch.Tensor | None, first_query: int) -> torch.Tensor:
    """Fill the bias (b, h, q, k) with the float32 minimum where causality or padding forbid.

    The queries are the tokens ``first_query .. first_query + q - 1`` of the sequence, the keys its first ``k``
    tokens; ``attention_mask`` (batch, >= k) 0/1 marks real tokens. The minimum is finite, so a fully masked
    row (a left-pad query) gives a finite, ignored output.
    """
    q_len, k_len = bias.shape[-2:]
    query_index = torch.arange(first_query, first_query + q_len, device=bias.device)
    key_index = torch.arange(k_len, device=bias.device)
    allowed = (key_index[None, :] <= query_index[:, None])[None, None]  # (1, 1, q, k)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, :k_len].bool()[:, None, None, :]
    return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)


@dataclass
class BlockBias:
    """A PE's bias for one forward, with the causal and padding masks, made one block of queries at a time.

    Attributes:
        blocks: the PE's ``bias_blocks`` for these positions.
        query_positions, key_positions: (batch or 1, seq) and (batch or 1, past + seq) positions.
        attention_mask: (batch, past + seq) 0/1 mask when it holds padding, else None.
        past: cached tokens before this forward's queries.
    """

    blocks: BiasBlocks
    query_positions: torch.Tensor
    key_positions: torch.Tensor
    attention_mask: torch.Tensor | None
    past: int
    flex_masks: dict[Any, Any] = field(default_factory=dict)  # create_block_mask results by (batch, device)
    sliding: bool = field(init=False)

    def __post_init__(self) -> None:
        # The common training case: a per-distance table, no padding, every position its index. Then each row of
        # a block is a window of the table and causality is the sign of the distance (``_windows``).
        total = self.key_positions.shape[1]
        first = total - self.query_positions.shape[1]
        indices = torch.arange(total, device=self.key_positions.device)[None]
        self.sliding = (
            self.blocks.lowest is not None
            and self.attention_mask is None
            and torch.equal(self.key_positions, indices)
            and torch.equal(self.query_positions, indices[:, first:])
        )

    def masked(self, inputs: tuple[torch.Tensor, ...], start: int, end: int, key_len: int) -> torch.Tensor:
        """(batch or 1, heads, end - start, key_len) masked float32 bias of queries ``start:end``."""
        if self.sliding:
            return self._windows(inputs[0], start, end, key_len)
        bias = self.blocks.make(inputs, self.query_positions[:, start:end], key_len)
        return mask_logits(bias, self.attention_mask, self.past + start)

    def _windows(self, table: torch.Tensor, start: int, end: int, key_len: int) -> torch.Tensor:
        """The bias of ``masked`` when ``sliding``, as windows of the (heads, n) distance table: query ``i`` against
        keys ``0 .. key_len - 1`` reads distances ``i .. i - key_len + 1``, a reversed run of the table."""
        assert self.blocks.lowest is not None
        distances = torch.arange(table.shape[1], device=table.device) + self.blocks.lowest
        table = table.masked_fill(distances < 0, torch.finfo(torch.float32).min).flip(-1)  # causality
        # Window a of the flipped table holds the distances n - 1 - a + lowest downwards; query ``start``'s is:
        newest = table.shape[1] - 1 + self.blocks.lowest - (self.past + start)
        return _Windows.apply(table, newest - (end - start) + 1, end - start, key_len)[None]

    def dense(self) -> torch.Tensor:
        """The whole masked bias (batch or 1, heads, seq, past + seq): the float mask of SDPA's path."""
        seq = self.query_positions.shape[1]
        return self.masked(self.blocks.inputs, 0, seq, self.past + seq)

    def spans(self, batch: int, heads: int, seq: int) -> Iterator[tuple[int, int, int]]:
        """``(start, end, key_len)`` of each query block; without padding, keys after the block's last query are
        skipped (causality masks them; with padding a fully masked row still averages over every key)."""
        total = self.past + seq
        size = max(MIN_BLOCK, min(MAX_BLOCK, BLOCK_ELEMENTS // (batch * heads * total)))
        for start in range(0, seq, size):
            end = min(start + size, seq)
            yield start, end, total if self.attention_mask is not None else self.past + end


class _Windows(torch.autograd.Function):
    """Rows ``first + rows - 1`` down to ``first`` of ``table.unfold(-1, key_len, 1)``, with a backward that sums
    the gradient along its diagonals (autograd's ``unfold_backward`` zero-fills the whole unfolded shape)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, first: int, rows: int, key_len: int) -> torch.Tensor:  # type: ignore[override]
        """(heads, n) table -> (heads, rows, key_len); row r is ``table[:, first + rows - 1 - r :][:, :key_len]``."""
        ctx.length, ctx.first = table.shape[1], first
        return table.unfold(-1, key_len, 1)[:, first : first + rows].flip(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        heads, rows, key_len = grad.shape
        # Row r' of the flipped gradient reads table[first + r' + c]: sum it along r' + c. Rows padded to
        # key_len + rows and read back rows of key_len + rows - 1 put entry (r', c) in column r' + c.
        padded = grad.new_zeros(heads, rows, key_len + rows)
        padded[:, :, :key_len] = grad.flip(1)
        skewed = padded.flatten(1)[:, : rows * (key_len + rows - 1)].view(heads, rows, key_len + rows - 1)
        grad_table = grad.new_zeros(heads, ctx.length)
        grad_table[:, ctx.first : ctx.first + key_len + rows - 1] = skewed.sum(1)
        return grad_table, None, None, None


def _grouped(tensor: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(batch, heads, n, x) -> (batch, kv_heads, heads // kv_heads * n, x): the query heads of each key head
    side by side (grouped-query attention; head ``h`` uses key head ``h // (heads // kv_heads)``)."""
    batch, heads, length, size = tensor.shape
    return tensor.reshape(batch, kv_heads, heads // kv_heads * length, size)


def _ungrouped(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of ``_grouped``: (batch, kv_heads, groups * n, x) -> (batch, heads, n, x)."""
    batch, _, rows, size = tensor.shape
    return tensor.reshape(batch, heads, rows * tensor.shape[1] // heads, size)


def _probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    start: int,
    end: int,
    key_len: int,
) -> torch.Tensor:
    """(batch, heads, end - start, key_len) softmax of the logits of queries ``start:end`` plus the masked bias,
    in ``_score_dtype`` (the logits are computed in the activation dtype, as by SDPA).

    Probabilities below the dtype's smallest normal number become 0: a steep bias (ALiBi far from the query)
    leaves many subnormal ones, which make the CPU's matmuls several times slower and weigh nothing.
    """
    heads = query.shape[1]
    logits = _grouped(query[:, :, start:end], key.shape[1]) @ key[:, :, :key_len].transpose(-1, -2)
    scores = _ungrouped(logits, heads).to(_score_dtype(logits))
    probabilities = torch.softmax(scores.mul_(scale).add_(bias), -1)
    return F.threshold_(probabilities, torch.finfo(probabilities.dtype).tiny, 0.0)


def _score_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Logits, softmax and its statistics are float32, or float64 for float64 activations."""
    return torch.promote_types(tensor.dtype, torch.float32)


class BlockwiseBiasAttention(torch.autograd.Function):
    """Causal attention with a ``BlockBias``; differentiable in q, k, v and the bias inputs (``blocks.inputs``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: BlockBias,
        scale: float,
        *inputs: torch.Tensor,
    ) -> torch.Tensor:
        """(batch, heads, seq, head_dim) query, (batch, kv_heads, past + seq, head_dim) key and value ->
        (batch, heads, seq, head_dim) output."""
        batch, heads, seq, _ = query.shape
        kv_heads = key.shape[1]
        output = torch.empty_like(query)
        for start, end, key_len in bias.spans(batch, heads, seq):
            block_bias = bias.masked(inputs, start, end, key_len)
            probabilities = _probabilities(query, key, block_bias, scale, start, end, key_len)
            block_output = _grouped(probabilities.to(value.dtype), kv_heads) @ value[:, :, :key_len]
            output[:, :, start:end] = _ungrouped(block_output, heads)
        ctx.save_for_backward(query, key, value, output)
        # The bias inputs stay on ctx, not in save_for_backward: ``make`` must see the very tensors (the PE's
        # parameters themselves for a PE that recomputes its bias) so torch.autograd.grad can reach them.
        ctx.bias, ctx.scale, ctx.inputs = bias, scale, inputs
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value, output = ctx.saved_tensors
        bias, scale, inputs = ctx.bias, ctx.scale, ctx.inputs
        wanted = [index for index, need in enumerate(ctx.needs_input_grad[5:]) if need]
        batch, heads, seq, _ = query.shape
        kv_heads = key.shape[1]
        grad_query = torch.zeros_like(query)
        grad_key = torch.zeros_like(key)
        grad_value = torch.zeros_like(value)
        grad_inputs: list[torch.Tensor | None] = [None] * len(inputs)
        score_dtype = _score_dtype(query)
        delta = (grad_output.to(score_dtype) * output.to(score_dtype)).sum(-1, keepdim=True)  # rowsum(dO * O)
        for start, end, key_len in bias.spans(batch, heads, seq):
            with torch.enable_grad():
                block_bias = bias.masked(inputs, start, end, key_len)
            probabilities = _probabilities(query, key, block_bias.detach(), scale, start, end, key_len)
            grad_block = _grouped(grad_output[:, :, start:end], kv_heads)
            grad_probabilities = _ungrouped(grad_block @ value[:, :, :key_len].transpose(-1, -2), heads)
            grad_scores = grad_probabilities.to(delta.dtype).sub_(delta[:, :, start:end]).mul_(probabilities)
            if wanted:
                grads = torch.autograd.grad(
                    block_bias, [inputs[index] for index in wanted], grad_scores.sum_to_size(block_bias.shape)
                )
                for index, grad in zip(wanted, grads, strict=True):
                    grad_inputs[index] = grad if grad_inputs[index] is None else grad_inputs[index] + grad
            grad_logits = _grouped(grad_scores.to(query.dtype) * scale, kv_heads)
            block_query = _grouped(query[:, :, start:end], kv_heads)
            block_probabilities = _grouped(probabilities.to(value.dtype), kv_heads)
            grad_query[:, :, start:end] = _ungrouped(grad_logits @ key[:, :, :key_len], heads)
            grad_key[:, :, :key_len] += grad_logits.transpose(-1, -2) @ block_query
            grad_value[:, :, :key_len] += block_probabilities.transpose(-1, -2) @ grad_block
        return grad_query, grad_key, grad_value, None, None, *grad_inputs


def flex_bias_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: BlockBias,
    scale: float,
    attend: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """``flex_attention`` (``attend``) with a ``score_mod`` indexing a ``distance_only`` PE's distance table, and a
    block mask for causality and padding: (batch, heads, seq, head_dim) output."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, heads, seq, _ = query.shape
    table, lowest = bias.blocks.inputs[0], bias.blocks.lowest
    assert lowest is not None, "flex_bias_attention needs a distance_only PE's table"
    query_positions = bias.query_positions.expand(batch, -1)
    key_positions = bias.key_positions.expand(batch, -1)
    padding, past = bias.attention_mask, bias.past

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return score + table[h, query_positions[b, q_idx] - key_positions[b, kv_idx] - lowest]

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        allowed = kv_idx <= q_idx + past
        return allowed if padding is None else allowed & padding[b, kv_idx].bool()

    mask_key = (batch, seq, query.device)
    if mask_key not in bias.flex_masks:  # once per forward, shared by the layers
        bias.flex_masks[mask_key] = create_block_mask(
            mask_mod, batch if padding is not None else None, None, seq, past + seq, device=query.device
        )
    return attend(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=bias.flex_masks[mask_key],
        scale=scale,
        enable_gqa=key.shape[1] != heads,
    )


_compiled_flex: Callable[..., torch.Tensor] | None = None


def block_bias_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: BlockBias, scale: float | None
) -> torch.Tensor:
    """Attention with ``bias``: compiled ``flex_attention`` on CUDA for a ``distance_only`` PE, the blockwise
    autograd function otherwise. Shapes as ``BlockwiseBiasAttention``."""
    global _compiled_flex
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if query.is_cuda and bias.blocks.lowest is not None:
        if _compiled_flex is None:
            from torch.nn.attention.flex_attention import flex_attention

            _compiled_flex = torch.compile(flex_attention)
        return flex_bias_attention(query, key, value, bias, scale, _compiled_flex)
    return BlockwiseBiasAttention.apply(query, key, value, bias, scale, *bias.blocks.inputs)
