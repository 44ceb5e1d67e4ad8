"""The PE zoo: every positional encoding behind one interface (see ``mathpe.pe.base``).

Importing this package registers every method; ``list_pes()`` names them and ``build_pe`` builds one.
"""

from mathpe.pe import additive, bias, coupling, long_rope, math_adaptive, math_rope, none, rotary  # noqa: F401  (registers the methods)
from mathpe.pe.base import KINDS, PEShape, PositionalEncoding
from mathpe.pe.registry import build_pe, list_pes, pe_class, pe_options

__all__ = ["KINDS", "PEShape", "PositionalEncoding", "build_pe", "list_pes", "pe_class", "pe_options"]
