"""Builders shared by the model tests."""

from __future__ import annotations

from typing import Any

import torch

from mathpe.pe import pe_options

#: Token ids the tiny test models treat as digits (digit-aware PEs get them as ``digit_token_ids``).
DIGIT_IDS = list(range(3, 13))


def default_pe_options(pe: str) -> dict[str, Any]:
    """Options that switch on every feature of ``pe`` in a tiny test model (digit awareness)."""
    return {"digit_token_ids": DIGIT_IDS} if "digit_token_ids" in pe_options(pe) else {}


@torch.no_grad()
def perturb_parameters(module: torch.nn.Module, scale: float = 0.2) -> None:
    """Add noise to every parameter so zero-initialised PE parts (gates, MLPs, bias tables) are not trivial."""
    for parameter in module.parameters():
        parameter.add_(scale * torch.randn_like(parameter))
