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
        """The one-line error naming ``name_or_path`` and the first line of the loader's ``error``."""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return cls(f"cannot load a model from {name_or_path!r}: {reason}")


class DataError(MathPEError, ValueError):
    """A data file that cannot be used (empty, malformed, no usable example); the message starts with its path."""


def error_summary(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type name when the message is empty: a reason that fits
    a one-line error (library messages often add hints and tracebacks on further lines)."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__
