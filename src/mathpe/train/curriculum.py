"""A length curriculum: short problems first, longer ones admitted as training goes on.

Small decoders without a digit-aligned position signal (RoPE, sinusoidal, NoPE...) must find the digit
alignment from the data; short operands first give them problems where it is easy to find before the long
ones, where it is hard (``results/`` has the measured effect). Written by hand because the
Hugging Face ``Trainer`` has no curriculum sampler; this one plugs in as its training sampler, so data
parallelism and exact resumption still work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthCurriculumSampler(Sampler[int]):
    """Training order for a length curriculum over examples with a difficulty level each.

    During the first ``curriculum_steps`` optimizer steps the batch of step ``s`` is drawn (with
    replacement) from the examples whose level is at most
    ``lowest + (highest - lowest) * s // curriculum_steps``, so the levels join one by one and the highest
    joins at ``curriculum_steps``; after that every epoch is a random permutation, as ``RandomSampler``.
    A step is ``global_batch_size`` consecutive indices (per-device batch x processes x accumulation: every
    process iterates the same sampler and takes its share of each step's batches). The order depends only
    on ``(seed, epoch)``, so a resumed run replays it exactly.

    Args:
        levels: the difficulty of each example (its operand digits for arithmetic), ``(num_examples,)``.
        curriculum_steps: optimizer steps the curriculum lasts (>= 1).
        global_batch_size: examples per optimizer step across processes.
        seed: the run's seed.
    """

    def __init__(
        self, levels: Sequence[int], curriculum_steps: int, global_batch_size: int, seed: int = 0
    ) -> None:
        if len(levels) == 0:
            raise ValueError("a length curriculum needs at least one training example")
        if curriculum_steps < 1 or global_batch_size < 1:
            raise ValueError(
                f"curriculum_steps={curriculum_steps} and global_batch_size={global_batch_size} must be >= 1"
            )
        levels_tensor = torch.as_tensor(levels, dtype=torch.long)
        self.sorted_levels, self.by_level = torch.sort(levels_tensor, stable=True)
        self.curriculum_steps = curriculum_steps
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the ``Trainer`` at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.by_level)

    def ceiling(self, step: torch.Tensor) -> torch.Tensor:
        """The highest level allowed at each optimizer ``step`` (any shape, long)."""
        lowest, highest = int(self.sorted_levels[0]), int(self.sorted_levels[-1])
        grown = lowest + (highest - lowest) * step // self.curriculum_steps
        return grown.clamp(max=highest)

    def __iter__(self) -> Iterator[int]:
        size = len(self)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(size, generator=generator)
        first_position = self.epoch * size
        in_curriculum = min(max(self.curriculum_steps * self.global_batch_size - first_position, 0), size)
        if in_curriculum:
            steps = torch.arange(first_position, first_position + in_curriculum) // self.global_batch_size
            pool_sizes = torch.searchsorted(self.sorted_levels, self.ceiling(steps), right=True)
            picks = (torch.rand(in_curriculum, generator=generator, dtype=torch.float64) * pool_sizes).long()
            order[:in_curriculum] = self.by_level[picks]
        return iter(order.tolist())
