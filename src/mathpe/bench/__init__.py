"""``mathpe bench``: what each PE costs, and mathpe against the implementations users would pick instead.

Sections (``sections.py``; each prints a Markdown table and lands in the JSON file under its key):

1. ``pe_overhead``: forward+backward step time and peak memory of mathpe's decoder for every PE, ratio to nope.
2. ``baselines``: mathpe's decoder against transformers' GPT-NeoX and x-transformers of the same shape.
3. ``swapped``: random GPT-NeoX models (tiny, Pythia-160M-shaped) with their PE swapped, against unswapped.
4. ``generation``: cached generation tokens/s of every PE against transformers' native GPT-NeoX.
5. ``scaling``: step time and peak memory against sequence length for rope and the bias PEs.
6. ``bias_attention``: every bias PE against nope, step time and peak memory, short and long sequences.
7. ``training`` (``training.py``): real training tokens per core-second of the length-study presets through
   ``mathpe train``'s Trainer, today's defaults against each speed setting and the helpful ones combined.
8. ``data`` (``training.py``): a study run's data preparation, generation and encoding (batched against one
   tokenizer call per pair).
9. ``cuda_*`` (``cuda.py``, when CUDA is present): sections 1-6 in bfloat16, training throughput and MFU of a
   Pythia-410M-shaped model, and ALiBi through ``flex_attention`` against the SDPA float mask.

Every figure is a median of repeated timed runs after warm-up; every comparison is a ratio of two sides
measured in the same process, alternating the sides round by round (``measure.py``). Rows with a target
say whether it is met; the run ends with the list of missed targets.

Threads: the CPU benchmark runs with ``threads`` intra-op threads, 1 by default: on a machine whose cores
other jobs share, more threads spin-wait on each other and make step times depend on that load, while one
thread makes repeated runs comparable.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from mathpe.bench.cuda import cuda_tables
from mathpe.bench.models import NEOX_SHAPES, Shape, preset_shape
from mathpe.bench.report import Table
from mathpe.bench.sections import SECTIONS, Setting, Sizes
from mathpe.bench.training import TrainingSizes, data_preparation, training_throughput
from mathpe.eval.report import write_json

__all__ = ["DEFAULT_THREADS", "PROFILES", "SECTION_KEYS", "run_benchmarks"]

#: Intra-op threads of the CPU benchmark (see the module docstring).
DEFAULT_THREADS = 1

PROFILES: dict[str, Sizes] = {
    # The sizes.
    "full": Sizes(
        shape=preset_shape("small"),
        batch=8,
        seqs=(512, 2048),
        swap_shapes=("tiny", "pythia-160m"),
        swap_every_pe=("tiny", "pythia-160m"),
        swap_batch=1,
        swap_seq=512,
        prompt=512,
        new_tokens=256,
        gen_batches=(1, 8),
        scaling_seqs=(256, 512, 1024, 2048, 4096),
        scaling_batch=2,
        bias_shape=Shape("hidden-256", 256, 4, 8, 32),
        bias_runs=((4, 512), (2, 2048)),
        throughput_shape="pythia-410m",
        throughput_batch=8,
        throughput_seq=2048,
        warmup=2,
        repeats=6,
        min_seconds=10.0,
        expected_minutes="about 2-2.5 hours (estimated from its sections run separately)",
    ),
    # The same sections at small sizes (expected_minutes: the target on 2 CPU cores).
    "quick": Sizes(
        shape=preset_shape("small"),
        batch=1,
        seqs=(128, 256),
        swap_shapes=("tiny", "pythia-160m"),
        swap_every_pe=("tiny",),
        swap_batch=1,
        swap_seq=64,
        prompt=32,
        new_tokens=16,
        gen_batches=(1, 4),
        scaling_seqs=(64, 128, 256, 512),
        scaling_batch=1,
        bias_shape=Shape("hidden-256", 256, 4, 8, 32),
        bias_runs=((2, 128), (1, 512)),
        throughput_shape="pythia-410m",
        throughput_batch=4,
        throughput_seq=512,
        warmup=1,
        repeats=4,
        min_seconds=1.5,
        expected_minutes="about 2.5 minutes",
    ),
    # Seconds: the test suite's check that every section runs and reports well-formed figures.
    "smoke": Sizes(
        shape=preset_shape("tiny"),
        batch=1,
        seqs=(16,),
        swap_shapes=("tiny",),
        swap_every_pe=("tiny",),
        swap_batch=1,
        swap_seq=16,
        prompt=8,
        new_tokens=4,
        gen_batches=(1,),
        scaling_seqs=(16, 32),
        scaling_batch=1,
        bias_shape=preset_shape("tiny"),
        bias_runs=((1, 16), (1, 32)),
        throughput_shape="tiny",
        throughput_batch=1,
        throughput_seq=16,
        warmup=1,
        repeats=2,
        min_seconds=0.0,
        expected_minutes="seconds",
    ),
}
#: Section ``training``'s sizes in each profile (the quick one leaves out the small preset and torch.compile's
#: minutes of compiling).
TRAINING_SIZES: dict[str, TrainingSizes] = {
    "full": TrainingSizes(
        presets=(("tiny", 20), ("small", 4)), batch=64, train_samples=20_000, warmup_steps=3
    ),
    "quick": TrainingSizes(
        presets=(("tiny", 8),), batch=64, train_samples=4_000, warmup_steps=2, compile=False
    ),
    "smoke": TrainingSizes(presets=(("tiny", 2),), batch=8, train_samples=64, warmup_steps=1, compile=False),
}
#: Keys of the sections ``run_benchmarks(sections=...)`` can select.
SECTION_KEYS = (
    "pe_overhead",
    "baselines",
    "swapped",
    "generation",
    "scaling",
    "bias_attention",
    "training",
    "data",
    "cuda",
)


def run_benchmarks(
    quick: bool = False,
    json_path: str | Path | None = None,
    *,
    profile: str | None = None,
    threads: int = DEFAULT_THREADS,
    sections: Iterable[str] | None = None,
    echo: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Run the benchmark, print each section's table as it completes, write the JSON file, return its content.

    Args:
        quick: the ``quick`` profile (ignored when ``profile`` is given); ``full`` otherwise.
        json_path: where to write the results as JSON, or None.
        profile: a key of ``PROFILES`` (``full``, ``quick``, ``smoke``).
        threads: intra-op CPU threads (``torch.set_num_threads``) for the run; restored after.
        sections: keys of ``SECTION_KEYS`` to run (default: all).
        echo: receives each printed block of Markdown.
    """
    name = profile or ("quick" if quick else "full")
    if name not in PROFILES:
        raise ValueError(f"unknown bench profile {name!r}; choose one of: {', '.join(PROFILES)}")
    selected = tuple(SECTION_KEYS if sections is None else sections)
    unknown = sorted(set(selected) - set(SECTION_KEYS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from: {', '.join(SECTION_KEYS)}")
    sizes = PROFILES[name]
    meta = _metadata(name, sizes, threads)
    echo(_header(meta, sizes))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results: dict[str, Any] = {"meta": meta, "tables": {}, "missed": []}
    try:
        started = time.perf_counter()
        for table in _tables(sizes, TRAINING_SIZES[name], selected):
            table.notes.append(f"Section time: {time.perf_counter() - started:.0f} s.")
            echo(table.markdown())
            results["tables"][table.key] = table.as_json()
            results["missed"].extend(
                f"{table.title}: {_row_label(row)} ({row['target']})" for row in table.missed()
            )
            _write(results, json_path)  # after every section, so a long run that stops keeps what it measured
            started = time.perf_counter()
    finally:
        torch.set_num_threads(previous_threads)
    missed = results["missed"]
    echo("### Targets missed\n\n" + ("\n".join(f"- {line}" for line in missed) or "None.") + "\n")
    return results


def _write(results: dict[str, Any], json_path: str | Path | None) -> None:
    if json_path is not None:
        write_json(Path(json_path), results)


def _tables(sizes: Sizes, training: TrainingSizes, selected: tuple[str, ...]) -> Iterator[Table]:
    """Run the selected sections in order, yielding each table as soon as it is complete."""
    setting = Setting(torch.device("cpu"), torch.float32, sizes)
    for key, section in zip(SECTION_KEYS, SECTIONS, strict=False):
        if key in selected:
            yield section(setting)
    if "training" in selected:
        yield training_throughput(setting, training)
    if "data" in selected:
        yield data_preparation(setting, training)
    if "cuda" in selected:
        yield from cuda_tables(sizes)


def _row_label(row: dict[str, Any]) -> str:
    """A row's identifying columns (its text and integer values), for the list of missed targets."""
    return ", ".join(
        f"{key}={value}"
        for key, value in row.items()
        if key != "target" and isinstance(value, str | int) and not isinstance(value, bool)
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _metadata(profile: str, sizes: Sizes, threads: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": profile,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "x_transformers": _version("x-transformers"),
        "sizes": dataclasses.asdict(sizes),
        "neox_shapes": {key: dataclasses.asdict(shape) for key, shape in NEOX_SHAPES.items()},
    }


def _header(meta: dict[str, Any], sizes: Sizes) -> str:
    return (
        f"## mathpe bench: profile {meta['profile']}, {meta['threads']} CPU thread(s), {meta['date']}\n\n"
        f"torch {meta['torch']}, transformers {meta['transformers']}, "
        f"x-transformers {meta['x_transformers'] or 'not installed'}, CUDA: {meta['cuda_device'] or 'none'}. "
        f"Expected duration on 2 CPU cores: {sizes.expected_minutes}. Figures are medians of at least {sizes.repeats} "
        f"timed runs (more while a comparison's runs total under {sizes.min_seconds:g} s) after {sizes.warmup} "
        "warm-up run(s); ratios are paired round by round.\n"
    )
