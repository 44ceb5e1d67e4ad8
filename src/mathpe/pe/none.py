"""NoPE: no positional encoding; the causal mask alone carries order (Kazemnejad et al. 2023)."""

from __future__ import annotations

from typing import ClassVar

from mathpe.pe.base import PositionalEncoding
from mathpe.pe.registry import register


@register("nope")
class NoPE(PositionalEncoding):
    """No positional information at all; a baseline that length-generalises surprisingly well."""

    kind: ClassVar[str] = "none"
