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

Re-initialisation: a PE records the keyword arguments it was built with (``constructor_options``), so
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
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch

from mathpe.compat import Float32StateModule

Kind = Literal["none", "additive", "rotary", "bias"]
KINDS: tuple[Kind, ...] = ("none", "additive", "rotary", "bias")


@contextlib.contextmanager
def float32_compute(device: torch.device) -> Iterator[None]:
    """Disable autocast for the PE math inside, so it runs in float32 whatever the caller's autocast."""
    if not torch.amp.is_autocast_available(device.type):  # e.g. the meta device: no autocast to disable
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield


class PositionalEncoding(Float32StateModule):
    """Base class of every PE. Subclasses set ``kind`` and implement the method of that kind.

    Constructor arguments shared by all PEs (keyword-only) are ``num_heads``, ``head_dim``, ``hidden_size``
    and ``max_position`` (the training context length, for PEs that scale with it or have a table). The
    method's own options follow as further keyword-only arguments with defaults; ``build_pe`` validates
    options against that signature.
    """

    kind: ClassVar[Kind]
    #: True when ``prepare`` needs ``input_ids`` (digit-aware PEs); models pass them when they have them.
    uses_token_ids: ClassVar[bool] = False
    #: True when the PE also needs each layer's hidden states (passed as ``hidden_states=`` to ``apply``).
    uses_hidden_states: ClassVar[bool] = False
    #: Largest supported position (exclusive), or None when unbounded.
    max_supported_position: int | None = None
    #: Buffers (frequency tables, slopes) that stay exactly float32 through ``.to(dtype)``, and parameters
    #: (learned scales of angles) that never drop below float32 (a float64 module keeps float64 ones): both
    #: follow the module's device, so angles and biases are exact in a half-precision model too
    #: (``mathpe.compat.Float32StateModule``).
    float32_buffers: ClassVar[tuple[str, ...]] = ()
    float32_parameters: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **options: Any) -> PositionalEncoding:
        """Record the constructor's keyword arguments (``constructor_options``) for ``initial_tensors``."""
        instance = super().__new__(cls)
        instance.__dict__["constructor_options"] = dict(options)
        return instance

    def __init__(self, *, num_heads: int, head_dim: int, hidden_size: int, max_position: int) -> None:
        super().__init__()
        for name, value in (
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("hidden_size", hidden_size),
            ("max_position", max_position),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.hidden_size = hidden_size
        self.max_position = max_position

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
            fresh = type(self)(**self.constructor_options)
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
        """Raise a clear ValueError when a position is beyond what this PE supports."""
        if self.max_supported_position is not None and position_ids.numel() > 0:
            largest = int(position_ids.max())
            if largest >= self.max_supported_position:
                raise ValueError(
                    f"{type(self).__name__} supports positions 0..{self.max_supported_position - 1}, "
                    f"got position {largest}; use a longer max_position or a relative PE"
                )

    def extra_repr(self) -> str:
        return f"kind={self.kind}, num_heads={self.num_heads}, head_dim={self.head_dim}"
