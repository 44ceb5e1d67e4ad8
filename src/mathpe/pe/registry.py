"""Name -> class registry of the PE zoo, and ``build_pe`` which validates options against signatures."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from mathpe.errors import ConfigError
from mathpe.pe.base import PositionalEncoding

_REGISTRY: dict[str, type[PositionalEncoding]] = {}

#: The eight methods mathpe was founded on, in the order tables list them.
FOUNDING_PES = (
    "rope",
    "math_rope",
    "long_rope",
    "sinusoidal",
    "t5_relative",
    "diet",
    "alibi",
    "math_adaptive",
)
#: The baselines and literature methods, listed after the founding ones.
BASELINE_PES = ("nope", "learned", "abacus", "fire", "kerple")
_COMMON_ARGS = ("num_heads", "head_dim", "hidden_size", "max_position")

PE = TypeVar("PE", bound=type[PositionalEncoding])


def register(name: str) -> Callable[[PE], PE]:
    """Class decorator adding a PE to the registry under ``name``."""

    def decorator(cls: PE) -> PE:
        if name in _REGISTRY:
            raise ValueError(f"PE {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def list_pes() -> list[str]:
    """Registry names of every PE: the founding eight, the baselines, then any other registered method."""
    order = [*FOUNDING_PES, *BASELINE_PES]
    return sorted(_REGISTRY, key=lambda name: order.index(name) if name in order else len(order))


def pe_class(name: str) -> type[PositionalEncoding]:
    """The class registered as ``name``; a ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown PE {name!r}; choose one of: {', '.join(list_pes())}") from None


def pe_options(name: str) -> dict[str, Any]:
    """The method-specific options of PE ``name`` with their defaults."""
    signature = inspect.signature(pe_class(name).__init__)
    return {
        param.name: param.default
        for param in signature.parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and param.name not in _COMMON_ARGS
    }


def check_pe_options(name: str, options: dict[str, Any]) -> None:
    """Raise ``ConfigError`` (a ValueError) naming the options PE ``name`` does not take, and those it does."""
    allowed = pe_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in allowed.items()) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for PE {name!r}; allowed: {listed}")


def build_pe(
    name: str, *, num_heads: int, head_dim: int, hidden_size: int, max_position: int, **options: Any
) -> PositionalEncoding:
    """Build the PE registered as ``name``.

    Raises:
        ValueError: unknown ``name``, or an option the method does not take (the message lists the allowed
            ones), or an option value out of range.
    """
    check_pe_options(name, options)
    return pe_class(name)(
        num_heads=num_heads, head_dim=head_dim, hidden_size=hidden_size, max_position=max_position, **options
    )
