"""mathpe's own error types: a user's mistake or unusable input, as opposed to a bug inside mathpe.

The ``mathpe`` command prints a ``MathPEError`` as one line ``mathpe: error: ...`` and exits with status 2;
any other exception keeps its traceback (exit status 1), so a bug never passes for a user mistake. The
subclasses also derive from the built-in type library callers already catch (``ValueError`` for bad
settings and data, ``FileNotFoundError`` for missing data).
"""

from __future__ import annotations


class MathPEError(Exception):
    """Bad input from the user: the message names the bad value (or file) and what is allowed."""


class ConfigError(MathPEError, ValueError):
    """A setting the user gave is not allowed, or does not fit the run folder it points at."""


class ModelLoadError(MathPEError, OSError):
    """A model the user named cannot be read (missing folder, unreadable config or weights)."""

    @classmethod
    def from_error(cls, name_or_path: str, error: Exception) -> ModelLoadError:
        """The one-line error naming ``name_or_path`` and the loader's reason (``error_summary``)."""
        return cls(f"cannot load a model from {name_or_path!r}: {error_summary(error)}")


class DataError(MathPEError, ValueError):
    """A data file that cannot be used (empty, malformed, no usable example); the message starts with its path."""


def error_summary(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when the message is empty: a reason that fits
    a one-line error (library messages often add hints and tracebacks on further lines). A first line that
    ends in a colon announces its reason on the second (``@strict`` configs: "Validation error for field
    'x':"), so the two are joined."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    if not lines:
        return type(error).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]
