"""Builders shared by the model tests."""

from __future__ import annotations

from typing import Any

import torch

from mathpe.data.tokenizer import DIGIT_IDS, digit_options

__all__ = ["DIGIT_IDS", "default_pe_options", "left_pad", "perturb_parameters", "step_by_step_logits"]


def default_pe_options(pe: str) -> dict[str, Any]:
    """Options that switch on every feature of ``pe`` in a tiny test model (digit awareness on ``DIGIT_IDS``)."""
    return digit_options(pe)


@torch.no_grad()
def perturb_parameters(module: torch.nn.Module, scale: float = 0.2) -> None:
    """Add noise to every parameter so zero-initialised PE parts (gates, MLPs, bias tables) are not trivial."""
    for parameter in module.parameters():
        parameter.add_(scale * torch.randn_like(parameter))


@torch.no_grad()
def step_by_step_logits(model: torch.nn.Module, input_ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Logits of ``input_ids`` (batch, seq) computed as cached decoding would: the first ``prefix`` tokens in
    one forward, then one token per forward with the cache. Returns (batch, seq, vocab)."""
    out = model(input_ids[:, :prefix], use_cache=True)
    steps, cache = [out.logits], out.cache
    for t in range(prefix, input_ids.shape[1]):
        out = model(input_ids[:, t : t + 1], cache=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.cache
    return torch.cat(steps, 1)


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (1, length_i) id rows into a left-padded (batch, width) batch and its 0/1 attention mask."""
    width = max(row.shape[1] for row in rows)
    batch = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(batch)
    for index, row in enumerate(rows):
        batch[index, width - row.shape[1] :], mask[index, width - row.shape[1] :] = row[0], 1
    return batch, mask
