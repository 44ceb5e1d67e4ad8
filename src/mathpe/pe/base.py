"""The one interface every positional encoding (PE) in the zoo implements.

A PE is an ``nn.Module`` with a ``kind`` that tells a model where it acts:

- ``"none"``: nothing (NoPE); causal attention alone carries order.
- ``"additive"``: ``embed(position_ids, input_ids=None, **extra) -> (batch, seq, hidden)``, added to
  the token embeddings once, before the first layer.
- ``"rotary"``: ``apply(q, k, position_ids, **extra) -> (q, k)`` rotates queries and keys of shape
  (batch, heads, seq, head_dim) inside every attention layer. ``cos_sin`` exposes the rotation so a model
  computes it once per forward and hands it to every layer.
- ``"bias"``: ``bias(query_positions, key_positions, **extra)`` returns a float tensor that broadcasts to
  (batch, heads, q_len, k_len) and is added to the attention logits.

Token-aware PEs (digit places, contextual positions) derive extra per-token inputs from the token ids or
embeddings in ``prepare``. ``prepare`` runs once per forward at model level; it receives the ``state``
returned by the previous forward of the same cached generation, so a PE whose per-token inputs depend on
earlier tokens (the length of the current digit run, a running count) stays exact during cached decoding.
The dict it returns is passed as keyword arguments to ``embed`` / ``apply`` / ``bias``. A PE that carries state
also gives it per token (``token_states``), so a cache cropped back by a few tokens (assisted decoding rejecting
candidates) resumes from the state at its last kept token.

Re-initialisation: a PE records its shape and the options it was built with (``constructor_options``), so
``initial_tensors`` rebuilds it and gives the parameters and buffers its constructor makes; a model built on
the meta device and materialised with ``to_empty()`` gets them back from ``init_weights()``. Nothing to do for
a new PE, as long as its constructor sets every tensor.

Conventions every PE keeps:
- All state is parameters or persistent buffers, so ``.to(device)`` / ``.to(dtype)`` moves everything,
  ``save_pretrained`` stores it and loading restores it (transformers 5 leaves non-persistent buffers
  uninitialised when it loads a checkpoint); nothing in a forward pass creates a tensor on a fixed device.
- Angles, cos/sin and biases are computed in float32 (also under autocast or after ``.half()``) and cast to
  the activation dtype last (``float32_compute`` below).
- Positions are arbitrary integer tensors (batch, seq): never assumed to be ``arange``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from mathpe.compat import Float32StateModule
from mathpe.errors import ConfigError

Kind = Literal["none", "additive", "rotary", "bias"]
KINDS: tuple[Kind, ...] = ("none", "additive", "rotary", "bias")


def require_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` when it is an integer >= ``minimum``; a one-line ``ConfigError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@contextlib.contextmanager
def float32_compute(device: torch.device) -> Iterator[None]:
    """Disable autocast for the PE math inside, so it runs in float32 whatever the caller's autocast."""
    if not torch.amp.is_autocast_available(device.type):  # e.g. the meta device: no autocast to disable
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield


@dataclass(frozen=True)
class PEShape:
    """The model dimensions a PE is built for, shared by every PE (its own options come on top).

    Attributes:
        num_heads: attention (query) heads.
        head_dim: dims per head (q and k are (batch, heads, seq, head_dim)).
        hidden_size: width of the token embeddings (additive PEs return (batch, seq, hidden_size)).
        max_position: the training context length, for PEs that scale with it or have a table.
    """

    num_heads: int
    head_dim: int
    hidden_size: int
    max_position: int

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class PositionalEncoding(Float32StateModule):
    """Base class of every PE. Subclasses set ``kind`` and implement the method of that kind.

    The constructor takes the model's ``PEShape`` (positional) and the method's own options as keyword-only
    arguments with defaults; ``build_pe`` validates options against that signature.

    Capabilities, which generic code (attention, evaluation, run settings, benchmarks) asks for instead of
    naming a PE, all readable from the class before a PE is built:

    - ``kind``: where the PE acts, hence which attention path it needs (a ``"bias"`` PE needs a float mask).
    - ``uses_token_ids``: ``prepare`` reads the token ids (models pass them when they have them).
    - ``position_limit(max_position)``: the longest sequence it supports in a model of that context.
    - ``rope_types``: the rotary embeddings of transformers' models it reproduces (for swapping a PE in).
    - ``eval_variants(options)`` and ``using_eval_variant``: fixed variants evaluation may choose among (a PE
      trained with a random offset evaluates at any one offset; ``mathpe.eval.evaluate`` votes over several).
    """

    kind: ClassVar[Kind]
    #: True when ``prepare`` needs ``input_ids`` (digit-aware PEs); models pass them when they have them.
    uses_token_ids: ClassVar[bool] = False
    #: transformers ``rope_type`` values (``config.rope_parameters``) this PE reproduces when a pretrained
    #: model's rope parameters fill its options (``mathpe.hf.swap.resolve_pe``); ``"default"``: plain RoPE.
    rope_types: ClassVar[tuple[str, ...]] = ()
    #: The option that picks the eval-time variant (``eval_variants``), or None for a PE without variants.
    eval_variant_option: ClassVar[str | None] = None
    #: The option bounding the variants: they are ``0..options[eval_variant_limit_option]``.
    eval_variant_limit_option: ClassVar[str | None] = None
    #: Buffers (frequency tables, slopes) that stay exactly float32 through ``.to(dtype)``, and parameters
    #: (learned scales of angles) that never drop below float32 (a float64 module keeps float64 ones): both
    #: follow the module's device, so angles and biases are exact in a half-precision model too
    #: (``mathpe.compat.Float32StateModule``).
    float32_buffers: ClassVar[tuple[str, ...]] = ()
    float32_parameters: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **options: Any) -> PositionalEncoding:
        """Record the method's options (``constructor_options``) for ``initial_tensors``.

        ``args`` is the shape, or nothing when ``copy`` and ``pickle`` create the instance.
        """
        instance = super().__new__(cls)
        instance.__dict__["constructor_options"] = dict(options)
        return instance

    def __init__(self, shape: PEShape, /) -> None:
        super().__init__()
        self.shape = shape

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The method's options with their defaults: the constructor's keyword-only arguments."""
        return {
            param.name: param.default
            for param in inspect.signature(cls.__init__).parameters.values()
            if param.kind is inspect.Parameter.KEYWORD_ONLY
        }

    @classmethod
    def position_limit(cls, max_position: int) -> int | None:
        """Positions ``0..limit - 1`` are supported in a model of context ``max_position``; None: unbounded."""
        return None

    @property
    def max_supported_position(self) -> int | None:
        """Largest supported position (exclusive) of this PE, or None when unbounded."""
        return self.position_limit(self.shape.max_position)

    @classmethod
    def eval_variants(cls, options: Mapping[str, Any]) -> range:
        """The eval-time variants of a PE built with ``options`` (its defaults fill the rest); empty: none."""
        if cls.eval_variant_limit_option is None:
            return range(0)
        limit = {**cls.option_defaults(), **options}[cls.eval_variant_limit_option]
        return range(require_int(cls.eval_variant_limit_option, limit, minimum=0) + 1)

    def check_eval_variant(self, variant: int) -> int:
        """``variant`` when it is one of this PE's ``eval_variants``; a one-line ``ConfigError`` otherwise."""
        if self.eval_variant_option is None:
            raise ConfigError(f"PE {self.registry_name!r} has no eval-time variants")
        variants = self.eval_variants(self.constructor_options)
        if require_int(self.eval_variant_option, variant, minimum=0) not in variants:
            raise ConfigError(
                f"{self.eval_variant_option} must be in 0..{self.eval_variant_limit_option}={variants.stop - 1}, "
                f"got {variant}"
            )
        return variant

    @contextlib.contextmanager
    def using_eval_variant(self, variant: int) -> Iterator[None]:
        """Evaluate with eval-time variant ``variant`` (one of ``eval_variants``) inside the block."""
        variant = self.check_eval_variant(variant)
        option = self.eval_variant_option
        saved = getattr(self, option)
        setattr(self, option, variant)
        try:
            yield
        finally:
            setattr(self, option, saved)

    def sequence_variants(self, like: torch.Tensor) -> torch.Tensor:
        """The variant of each new sequence, shaped and placed like ``like`` (batch,): uniform over the
        ``eval_variants`` in training (a PE with variants trains on random ones), the eval variant in eval."""
        if self.training:
            count = len(self.eval_variants(self.constructor_options))
            return torch.randint(0, count, like.shape, device=like.device)
        return torch.full_like(like, getattr(self, self.eval_variant_option))

    def prepare(
        self,
        *,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        state: Any = None,
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """Per-token inputs derived once per forward, and the state to carry to the next cached step.

        Args:
            input_ids: (batch, seq) token ids of this forward's new tokens, or None.
            inputs_embeds: (batch, seq, hidden) token embeddings of the new tokens.
            attention_mask: (batch, seq) 1 for real tokens, 0 for padding, for the new tokens only.
            state: what this method returned as state for the previous forward of the same cached sequence,
                or None at the start of a sequence.

        Returns:
            ``(extra, new_state)``: ``extra`` is passed as keyword arguments to ``embed`` / ``apply`` /
            ``bias``; ``new_state`` must support ``index_select`` along batch (see ``reorder_state``).
        """
        return {}, None

    def token_states(self, extra: dict[str, torch.Tensor], state: Any) -> Any:
        """The state ``prepare`` would have returned after each token of its forward, for cropped caches.

        Args:
            extra, state: what ``prepare`` returned for a forward of ``seq`` tokens.

        Returns:
            None when ``state`` is None (nothing carried); otherwise the state with a token dim after batch
            (tensors (batch, seq, ...), or a dict of them) whose ``[:, t]`` is the state after token ``t``
            (so ``[:, -1]`` is ``state``). A PE that carries state and does not override this returns None:
            its caches cannot be cropped (a clear error then).
        """
        return None

    def initial_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers (by name) of a freshly built copy of this PE, on the CPU.

        ``init_weights`` copies them into a PE whose tensors are uninitialised (built on the meta device).
        """
        with torch.device("cpu"):
            fresh = type(self)(self.shape, **self.constructor_options)
        return {**dict(fresh.named_parameters()), **dict(fresh.named_buffers())}

    @staticmethod
    def reorder_state(state: Any, batch_index: torch.Tensor) -> Any:
        """Select batch rows of a state returned by ``prepare`` (beam search reorders its beams)."""
        if state is None:
            return None
        if isinstance(state, torch.Tensor):
            return state.index_select(0, batch_index.to(state.device))
        if isinstance(state, dict):
            return {key: PositionalEncoding.reorder_state(value, batch_index) for key, value in state.items()}
        raise TypeError(f"cannot reorder PE state of type {type(state).__name__}")

    def check_positions(self, position_ids: torch.Tensor) -> None:
        """Raise a one-line ``ConfigError`` when a position is beyond what this PE supports."""
        if self.max_supported_position is not None and position_ids.numel() > 0:
            largest = int(position_ids.max())
            if largest >= self.max_supported_position:
                raise ConfigError(
                    f"{type(self).__name__} supports positions 0..{self.max_supported_position - 1}, "
                    f"got position {largest}; use a longer max_position or a relative PE"
                )

    def extra_repr(self) -> str:
        return f"kind={self.kind}, num_heads={self.shape.num_heads}, head_dim={self.shape.head_dim}"
