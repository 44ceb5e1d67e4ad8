"""Held-out perplexity of a causal LM at a given context length, attention over the whole window."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


@torch.no_grad()
def perplexity(
    model: PreTrainedModel, stream: torch.Tensor, context: int, *, max_tokens: int, batch_size: int = 8
) -> float:
    """exp(mean next-token loss) over the first ``max_tokens`` tokens of ``stream``, cut into windows.

    The tokens are split into consecutive, non-overlapping windows of ``context`` tokens; each window is one
    forward pass (every token attends to all earlier tokens of its window), and every token but a window's
    first is predicted. The same tokens are used for every ``context`` that divides ``max_tokens``, so
    perplexities at 1x, 2x and 4x a model's training context compare like with like.

    Args:
        model: a causal LM.
        stream: (tokens,) long tensor of held-out text.
        context: window length in tokens.
        max_tokens: how many tokens of ``stream`` to score (a multiple of ``context``).
        batch_size: windows per forward pass.
    """
    if max_tokens % context:
        raise ValueError(f"max_tokens={max_tokens} is not a multiple of context={context}")
    if stream.numel() < max_tokens:
        raise ValueError(
            f"the held-out stream has {stream.numel()} tokens, fewer than max_tokens={max_tokens}"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = stream[:max_tokens].view(-1, context)
    total_loss, total_tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total_loss += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        ).item()
        total_tokens += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total_loss / total_tokens)
