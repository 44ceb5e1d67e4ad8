"""Configuration of mathpe's decoder, and the ``--model_size`` presets."""

# No ``from __future__ import annotations`` here: ``@strict`` checks each field's type only when the annotations
# are real types, not strings (as in transformers' own configs).
from typing import Any

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig
from transformers.utils.type_validators import interval, positive_int_field

from mathpe.errors import ConfigError, error_summary
from mathpe.pe.base import PEShape
from mathpe.pe.registry import check_pe_options, pe_class
from mathpe.remote_code import RemoteCodeConfig


@strict
class MathPEConfig(RemoteCodeConfig, PreTrainedConfig):
    """A pre-LayerNorm causal decoder whose positional encoding is any PE of the zoo.

    Saved folders load outside mathpe's own code too (``mathpe.remote_code``).

    Args:
        pe: registry name of the positional encoding (``mathpe.pe.list_pes()``).
        pe_options: the method's options (``mathpe.pe.pe_options(pe)`` lists them with defaults).
        max_position_embeddings: the training context length; PEs with a table stop there (``position_limit``),
            scaled PEs use it as their reference length.
        randomized_positions: train on randomized positions (Ruoss et al. 2023): a training forward sees a
            sorted random subset of ``0..randomized_positions-1`` instead of ``0..n-1``; None: off.
    """

    model_type = "mathpe"
    remote_model_class = "MathPEDecoderLoader"
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    pe: str = "rope"
    pe_options: dict | None = None
    vocab_size: int = positive_int_field(default=32)
    hidden_size: int = positive_int_field(default=128)
    num_layers: int = positive_int_field(default=4)
    num_heads: int = positive_int_field(default=4)
    intermediate_size: int | None = positive_int_field(default=None)
    max_position_embeddings: int = positive_int_field(default=256)
    randomized_positions: int | None = positive_int_field(default=None)
    dropout: int | float = interval(min=0.0, max=1.0, exclude_max=True)(default=0.0)
    layer_norm_eps: int | float = interval(min=0.0, exclude_min=True)(default=1e-5)
    initializer_range: int | float = interval(min=0.0, exclude_min=True)(default=0.02)
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        pe_class(
            self.pe
        )  # here, not in validate_architecture, so an unknown PE is a plain one-line ConfigError
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Check the PE name and options and the head split (a one-line ``ConfigError`` each)."""
        check_pe_options(self.pe, self.pe_options or {})
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pe_shape(self) -> PEShape:
        """The dimensions the model's PE is built for."""
        return PEShape(self.num_heads, self.head_dim, self.hidden_size, self.max_position_embeddings)


#: ``--model_size`` presets of the decoder: (hidden_size, num_layers, num_heads, max_position_embeddings).
PRESETS: dict[str, dict[str, int]] = {
    # ~0.8M parameters: trains an addition model in minutes on one CPU core.
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "max_position_embeddings": 256},
    # ~12M parameters.
    "small": {"hidden_size": 384, "num_layers": 6, "num_heads": 6, "max_position_embeddings": 1024},
    # Pythia-160M's shape (12 layers, d=768, 12 heads, 2048 context).
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "max_position_embeddings": 2048},
}


#: The decoder settings a run may change in its preset (``--config_overrides``; ``MathPEConfig`` checks their
#: types and ranges); the others (PE, vocabulary, special tokens, randomized positions) come from the run itself.
ARCHITECTURE_OVERRIDES: tuple[str, ...] = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "dropout",
    "layer_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
)


def preset_config(size: str, *, pe: str = "rope", vocab_size: int = 32, **overrides: Any) -> MathPEConfig:
    """A ``MathPEConfig`` for ``--model_size`` ``tiny`` / ``small`` / ``base`` with PE ``pe``.

    ``overrides`` replace any config field (e.g. ``pe_options``, ``max_position_embeddings``). A value of the
    wrong type or out of range is a one-line ``ConfigError`` naming the field.
    """
    if size not in PRESETS:
        raise ConfigError(
            f"unknown model size {size!r}; presets are {', '.join(PRESETS)} (or a model id / path)"
        )
    try:
        return MathPEConfig(pe=pe, vocab_size=vocab_size, **{**PRESETS[size], **overrides})
    except StrictDataclassError as error:
        raise config_error(error) from error


def config_error(error: StrictDataclassError) -> ConfigError:
    """``@strict``'s two-line validation error as one ``ConfigError`` line (mathpe's own check's error as is)."""
    if isinstance(error.__cause__, ConfigError):
        return error.__cause__
    return ConfigError(error_summary(error))
