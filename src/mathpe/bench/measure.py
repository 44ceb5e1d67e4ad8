"""Timing and peak memory of benchmark workloads.

Timing: every side of a comparison runs ``warmup`` untimed times, then rounds in which each side runs once: an
even round in a random (seeded) order, the next in the reverse order, so every side runs as often early as late
and follows varying neighbours (cache and frequency effects favour no side). At least ``repeats`` rounds
(rounded up to even), and more while the timed runs total less than ``min_seconds`` (cheap workloads get more
rounds, up to ``MAX_ROUNDS``, so their medians are as steady as those of expensive ones). A figure is the median
over rounds; a ratio is the median over rounds of the two sides' times *in the same round*, so a load change
from another job on the shared cores hits both sides of a pair alike.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the call. On the CPU
nothing tracks the high-water mark (``tracemalloc`` does not see torch's allocator, and ``ru_maxrss`` is
process-wide and monotonic), so one run is recorded with ``torch.profiler(profile_memory=True)``: every
allocation and free of torch's CPU allocator during the call, in time order; the peak is the highest running
sum. Blocks allocated before the call and freed during it do not count (the profiler drops those frees), so
the figure is what the call itself allocates at its high-water mark: activations, gradients, temporaries.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from random import Random

import torch
from torch.profiler import ProfilerActivity, profile

from mathpe.compat import profiled_allocations

#: Most rounds ``min_seconds`` adds (rounds come in pairs: an order and its reverse).
MAX_ROUNDS = 50


@dataclass
class Measurement:
    """Seconds of each side's timed runs, round by round, and each side's peak bytes (None: not measured)."""

    seconds: dict[str, list[float]]
    peak_bytes: dict[str, int] | None = None

    def median(self, side: str) -> float:
        """Median seconds of ``side``."""
        return statistics.median(self.seconds[side])

    def ratio(self, side: str, baseline: str) -> float:
        """Median over rounds of ``side``'s time / ``baseline``'s time in the same round."""
        return statistics.median(
            a / b for a, b in zip(self.seconds[side], self.seconds[baseline], strict=True)
        )


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA), so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    sides: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    device: torch.device,
    min_seconds: float = 0.0,
    memory: bool = False,
) -> Measurement:
    """Time every side (see the module docstring); ``memory``: record the peak of each side's last warm-up run."""
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1, got {warmup} and {repeats}")
    names = list(sides)
    peaks: dict[str, int] = {}
    for name in names:
        for _ in range(warmup - 1):
            sides[name]()
        if memory:
            peaks[name] = peak_memory(sides[name], device)
        else:
            sides[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    random = Random(0)
    order = names
    total = 0.0
    round_index = 0
    while round_index % 2 or round_index < repeats or (total < min_seconds and round_index < MAX_ROUNDS):
        if round_index % 2 == 0:
            order = random.sample(names, len(names))
        else:
            order.reverse()
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            sides[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
            total += seconds[name][-1]
        round_index += 1
    return Measurement(seconds, peaks if memory else None)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated by one call of ``fn`` at its high-water mark, above what was allocated before it."""
    return memory_use(fn, device)[0]


def memory_use(fn: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """(peak, retained) bytes of one call of ``fn``: its high-water mark, and what its result still holds.

    Both count only what the call allocates; the result (and the autograd graph behind it) stays alive until
    the measurement ends.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        synchronize(device)
        use = torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before
        del result
        return use
    with _native_stderr_muted(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    current = peak = 0
    for _, size in profiled_allocations(prof):
        current += size
        peak = max(peak, current)
    return peak, current


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Silence file descriptor 2 inside: the profiler's C++ side logs a start and a stop line per recording."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
