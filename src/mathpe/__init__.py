"""mathpe: positional encodings for mathematical reasoning in transformer language models."""

__version__ = "0.1.0"
