"""Name -> class registry of the PE zoo, and ``build_pe`` which validates options against signatures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from mathpe.errors import ConfigError
from mathpe.pe.base import PEShape, PositionalEncoding

_REGISTRY: dict[str, type[PositionalEncoding]] = {}

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
    """Registry names of every PE, in alphabetical order (presets and reports choose their own order)."""
    return sorted(_REGISTRY)


def pe_class(name: str) -> type[PositionalEncoding]:
    """The class registered as ``name``; a ``ConfigError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown PE {name!r}; choose one of: {', '.join(list_pes())}") from None


def pe_options(name: str) -> dict[str, Any]:
    """The method-specific options of PE ``name`` with their defaults: its constructor's keyword-only arguments
    (the ``PEShape`` comes first, positional-only)."""
    return pe_class(name).option_defaults()


def check_pe_options(name: str, options: dict[str, Any]) -> None:
    """Raise a ``ConfigError`` for an unknown PE ``name`` or an option it does not take (listing the allowed)."""
    allowed = pe_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in allowed.items()) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for PE {name!r}; allowed: {listed}")


def build_pe(name: str, shape: PEShape, **options: Any) -> PositionalEncoding:
    """Build the PE registered as ``name`` for a model of ``shape``.

    Raises:
        ConfigError: unknown ``name``, or an option the method does not take (the message lists the allowed
            ones), or an option value out of range.
    """
    check_pe_options(name, options)
    try:
        return pe_class(name)(shape, **options)
    except ConfigError as error:  # an option value out of range: name the PE it was given to
        raise ConfigError(f"PE {name!r}: {error}") from None
