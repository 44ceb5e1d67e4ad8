"""Randomized positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length Generalization of
Transformers", arXiv 2305.16843), usable with any PE that takes positions.

In training, a sequence whose positions are ``0..n-1`` gets instead a sorted random subset of ``n`` positions
drawn from ``0..max_train_position-1`` (``max_train_position`` larger than any test length), so the
positions of test-length sequences are seen in training while their order is kept. In eval the positions
stay as they are (``arange``).

``mathpe.attention.build_pe_context`` applies it once per training forward without a cache (so every layer
and a bias's query and key positions see the same draw) when the model config's ``randomized_positions``
is set (``--randomized_positions`` for mathpe's decoder).
"""

from __future__ import annotations

import torch

from mathpe.errors import ConfigError


def randomized_positions(
    position_ids: torch.Tensor, max_train_position: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace positions ``0..n-1`` by a sorted random subset of ``0..max_train_position-1``, per row.

    Position ``p`` of a row becomes the ``p``-th smallest of the row's draw, so equal positions stay equal
    (left padding: every pad has position 0, like the first real token) and order is kept.

    Args:
        position_ids: (batch, seq) long positions >= 0 (``arange``, or counted from the attention mask).
        max_train_position: the size of the range drawn from; it must exceed every position.
        generator: a ``torch.Generator`` on ``position_ids``'s device for reproducible draws, or None.

    Returns:
        (batch, seq) long positions, strictly increasing where ``position_ids`` is.
    """
    if isinstance(max_train_position, bool) or not isinstance(max_train_position, int):
        raise ConfigError(f"max_train_position must be an integer, got {max_train_position!r}")
    if position_ids.numel() == 0:
        return position_ids
    count = int(position_ids.max()) + 1
    if count > max_train_position:
        raise ConfigError(
            f"randomized positions draw from 0..{max_train_position - 1} but the sequence has position "
            f"{count - 1}; raise max_train_position above the longest sequence"
        )
    batch = position_ids.shape[0]
    # A uniform random subset of size `count` per row: the indices of the `count` largest of iid uniforms.
    scores = torch.rand(batch, max_train_position, generator=generator, device=position_ids.device)
    subset = scores.topk(count, dim=-1).indices.sort(dim=-1).values
    return subset.gather(1, position_ids.long())
