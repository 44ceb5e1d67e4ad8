"""7. Training throughput of the study presets: real tokens per core-second through ``mathpe train``'s Trainer;
8. the same runs' data preparation (generating and encoding the training pairs).

The length studies (``mathpe compare --preset addition-length``) are bounded by CPU minutes per run, so this
section times the run's own training path (``mathpe.train.run.build_trainer``: the ``Trainer``, its data
loader, padding collator, fused AdamW, logging) on the studies' data and settings: reversed addition of 1-8
digits, the study's batch size and learning rate. Each side is one setting of ``RunConfig`` (or several); a
side's round is one ``Trainer.train()`` of ``warmup_steps`` untimed and ``steps`` timed optimizer steps, and
the sides take turns round by round (``measure.py``), so load from other jobs hits them alike.

Throughput counts the tokens that are not padding (the attention mask's ones) of the timed steps over the
process's CPU time (``time.process_time``): core-seconds, whatever else shares the machine. The settings that
beat today's defaults on their own are then measured together against the defaults in rounds of their own
("combined"). FLOP/s are ``training_flops`` of the real tokens; the peak is a 2048 x 2048 matrix product of
the side's dtype (float32, or bfloat16 under ``--bf16``) measured in this process.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mathpe.bench.cuda import training_flops
from mathpe.bench.report import Table, Target
from mathpe.bench.sections import Setting
from mathpe.data.collate import encode_example
from mathpe.eval.tasks import ArithmeticSettings
from mathpe.train.compare import LENGTH_STUDY
from mathpe.train.config import RunConfig
from mathpe.train.run import build_tasks, build_trainer, supervised_features, training_arguments
from mathpe.train.setup import build_model, build_tokenizer

#: The issue's target: real training tokens per core-second of the combined settings against today's defaults.
TRAINING_SPEEDUP_TARGET = Target(">=", 2.0)
#: The preset the target is held to.
TARGET_PRESET = "tiny"
#: The speed settings, each a ``RunConfig`` change; "combined" joins those that beat the defaults alone.
SPEED_SETTINGS: dict[str, dict[str, Any]] = {
    "group_by_length": {"group_by_length": True},
    "torch_compile": {"torch_compile": True},
    "bf16": {"bf16": True},
}
BASELINE = "defaults"
#: Side of a 2048 x 2048 matrix product, the machine's matmul peak.
PEAK_SIZE = 2048


@dataclass(frozen=True)
class TrainingSizes:
    """Sizes of section 7 in one benchmark profile."""

    presets: tuple[tuple[str, int], ...]  # (model preset, timed optimizer steps per round)
    batch: int  # examples per step (the length studies' 64 in the quick and full profiles)
    train_samples: int  # addition problems the data loader draws from
    warmup_steps: int  # untimed steps at the start of every round
    compile: bool = True  # time --torch_compile (its compilation: a minute or more of warm-up per side)


@dataclass
class _Window:
    """The timed steps of one round: real and padded tokens, CPU seconds."""

    real_tokens: int
    padded_tokens: int
    cpu_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.cpu_seconds


class _CountingCollator:
    """The Trainer's collator, recording each batch's real (attention mask) and padded token counts."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.sum()), mask.numel()))
        return batch


class _StepClock(TrainerCallback):
    """CPU time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_) -> None:
        self.ends.append(time.process_time())


class _TrainerSide:
    """One side: a model and ``MathPETrainer`` built as ``mathpe train`` builds them; each call trains a round."""

    def __init__(self, config: RunConfig, warmup_steps: int) -> None:
        torch.manual_seed(0)
        self.config = config
        tokenizer = build_tokenizer(config)
        self.model = build_model(config, tokenizer)
        self.clock = _StepClock()
        self.trainer = build_trainer(
            config, self.model, tokenizer, build_tasks(config), callbacks=[self.clock], progress=False
        )
        self.counter = _CountingCollator(self.trainer.data_collator)
        self.trainer.data_collator = self.counter
        self.warmup_steps = warmup_steps
        self.windows: list[_Window] = []
        self.first_call_seconds: float | None = None

    def __call__(self) -> None:
        # accelerate's state (torch.compile, mixed precision) is one per process, set by the newest Accelerator,
        # and new TrainingArguments reset it: so this side's Trainer sets it up again before it trains.
        self.trainer.args = training_arguments(self.config, progress=False)
        self.trainer.create_accelerator_and_postprocess()
        self.counter.batches.clear()
        self.clock.ends.clear()
        started = time.perf_counter()
        self.trainer.train()
        if self.first_call_seconds is None:
            self.first_call_seconds = time.perf_counter() - started
        timed = self.counter.batches[self.warmup_steps : len(self.clock.ends)]
        self.windows.append(
            _Window(
                real_tokens=sum(real for real, _ in timed),
                padded_tokens=sum(padded for _, padded in timed),
                cpu_seconds=self.clock.ends[-1] - self.clock.ends[self.warmup_steps - 1],
            )
        )


def study_config(
    preset: str, sizes: TrainingSizes, steps: int, output_dir: Path, **changes: Any
) -> RunConfig:
    """The length studies' run (``LENGTH_STUDY``) at bench sizes, with ``changes`` to its settings."""
    return RunConfig(
        model_size=preset,
        arithmetic=ArithmeticSettings(train_digits=LENGTH_STUDY["train_digits"], eval_lengths=(1,)),
        train_samples=sizes.train_samples,
        eval_samples=1,
        batch_size=sizes.batch,
        max_steps=sizes.warmup_steps + steps,
        learning_rate=LENGTH_STUDY["learning_rate"],
        warmup_steps=LENGTH_STUDY["warmup_steps"],
        save_steps=10**9,  # no checkpoint inside the bench
        output_dir=str(output_dir),
        **changes,
    )


def matmul_peak(dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP per CPU-second of a ``PEAK_SIZE``-square matrix product in ``dtype`` (best of ``repeats``, after
    one untimed run)."""
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * PEAK_SIZE**3 / best


def _timed(fn: Any) -> float:
    """CPU seconds of ``fn()``."""
    started = time.process_time()
    fn()
    return time.process_time() - started


def training_throughput(setting: Setting, sizes: TrainingSizes) -> Table:
    """7. Real training tokens per core-second of the study presets: defaults, each speed setting, combined."""
    table = setting.table(
        "training",
        f"7. Training throughput of the length-study presets (batch {sizes.batch}, reversed addition 1-8 digits, "
        "Trainer path): real tokens per core-second",
        [
            "preset",
            "settings",
            "tokens_per_core_s",
            "ratio_vs_defaults",
            "step_ms",
            "real_token_fraction",
            "gflops_per_s",
            "peak_fraction",
            "first_call_s",
            "target",
            "met",
        ],
    )
    peaks = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16)}
    settings = {
        name: changes for name, changes in SPEED_SETTINGS.items() if sizes.compile or name != "torch_compile"
    }
    transformers.utils.logging.disable_progress_bar()
    folders = itertools.count()
    with tempfile.TemporaryDirectory() as scratch:
        for preset, steps in sizes.presets:

            def side(changes: Mapping[str, Any], preset: str = preset, steps: int = steps) -> _TrainerSide:
                folder = Path(scratch) / f"side-{next(folders)}"
                return _TrainerSide(study_config(preset, sizes, steps, folder, **changes), sizes.warmup_steps)

            baseline = side({})
            sides = {BASELINE: baseline, **{name: side(changes) for name, changes in settings.items()}}
            _measure(setting, sides)
            ratios = {name: _ratio(sides[name], baseline) for name in settings}
            helpful = [name for name in settings if ratios[name] > 1]
            checked = preset == TARGET_PRESET
            if len(helpful) > 1:  # measured together against the defaults, in rounds of their own
                _add_rows(table, preset, sides, baseline, peaks)
                combined = " + ".join(helpful)
                changes = {key: value for name in helpful for key, value in settings[name].items()}
                baseline.windows.clear()
                pair = {BASELINE: baseline, combined: side(changes)}
                _measure(setting, pair)
                _add_rows(table, preset, {combined: pair[combined]}, baseline, peaks, checked=checked)
            else:  # the best single setting is the combination
                best = max(ratios, key=ratios.__getitem__)
                _add_rows(table, preset, sides, baseline, peaks, checked=checked and best)
    table.notes.extend(
        [
            f"Target {TRAINING_SPEEDUP_TARGET} x the defaults' real tokens per core-second for {TARGET_PRESET}, "
            "with the settings that beat the defaults alone combined (measured against the defaults in rounds "
            "of their own). Ratios are medians of round-by-round pairs; tokens per core-second and step_ms are "
            "medians over rounds.",
            "Core-seconds are the process's CPU time (one torch thread), so waiting for a core another job holds "
            "does not count; caches and memory bandwidth are still shared, so figures vary with the machine's "
            "load.",
            f"peak_fraction: gflops_per_s over a {PEAK_SIZE} x {PEAK_SIZE} matrix product's rate in the side's "
            f"dtype, measured here: float32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bfloat16 "
            f"{peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s. first_call_s: wall-clock seconds of the side's "
            "first round, with its warm-up (torch_compile's compilation; a later side whose graphs are already "
            "in inductor's cache compiles in seconds).",
        ]
    )
    return table


def _measure(setting: Setting, sides: Mapping[str, _TrainerSide]) -> None:
    """Rounds of every side in turn (``Setting.measure``); each side keeps the windows of its timed rounds."""
    setting.measure(sides)
    for side in sides.values():
        del side.windows[: setting.sizes.warmup]


def _ratio(side: _TrainerSide, baseline: _TrainerSide) -> float:
    """Median over rounds of the side's tokens per core-second over the baseline's in the same round."""
    return statistics.median(
        a.tokens_per_second / b.tokens_per_second for a, b in zip(side.windows, baseline.windows, strict=True)
    )


def _add_rows(
    table: Table,
    preset: str,
    sides: Mapping[str, _TrainerSide],
    baseline: _TrainerSide,
    peaks: Mapping[torch.dtype, float],
    *,
    checked: bool | str = False,
) -> None:
    """A row per side; ``checked``: the target on every row (True) or on the side of that name."""
    for name, side in sides.items():
        windows = side.windows
        steps = side.trainer.args.max_steps - side.warmup_steps
        ratio = _ratio(side, baseline)
        real, padded = sum(w.real_tokens for w in windows), sum(w.padded_tokens for w in windows)
        length = real / (len(windows) * steps * side.trainer.args.per_device_train_batch_size)
        flops = statistics.median(
            training_flops(side.model, w.real_tokens, round(length)) / w.cpu_seconds for w in windows
        )
        peak = peaks[torch.bfloat16 if side.trainer.args.bf16 else torch.float32]
        target = checked is True or checked == name
        table.add(
            [("", TRAINING_SPEEDUP_TARGET, ratio)] if target else (),
            preset=preset,
            settings=name,
            tokens_per_core_s=statistics.median(w.tokens_per_second for w in windows),
            ratio_vs_defaults=ratio,
            step_ms=1000 * statistics.median(w.cpu_seconds for w in windows) / steps,
            real_token_fraction=real / padded,
            gflops_per_s=flops / 1e9,
            peak_fraction=flops / peak,
            first_call_s=side.first_call_seconds,
        )


def data_preparation(setting: Setting, sizes: TrainingSizes) -> Table:
    """8. A length-study run's data: generating its addition problems, and encoding them as training features
    (``supervised_features``: two batched tokenizer calls) against one tokenizer call per pair."""
    table = setting.table(
        "data",
        f"8. Data preparation of a length-study run ({sizes.train_samples} addition problems of 1-8 digits, "
        "zero-padded, fused index hints): encoding time, ratio to one tokenizer call per pair",
        ["encoding", "seconds", "pairs_per_s", "ratio_vs_per_pair"],
    )
    study_format = ArithmeticSettings(
        train_digits=LENGTH_STUDY["train_digits"],
        eval_lengths=(1,),
        **{key: LENGTH_STUDY[key] for key in ("zero_pad", "index_hints", "fuse_hints")},
    )
    config = dataclasses.replace(
        study_config(TARGET_PRESET, sizes, 0, Path(tempfile.gettempdir())), arithmetic=study_format
    )
    tokenizer = build_tokenizer(config)
    task = build_tasks(config)[0]
    generation = setting.measure({"generate": lambda: build_tasks(config)}).median("generate")
    encoding = setting.measure(
        {
            "per_pair": lambda: [encode_example(tokenizer, *pair) for pair in task.train_pairs],
            "batched": lambda: supervised_features(task, tokenizer, None),
        }
    )
    for name, side in (("one call per pair", "per_pair"), ("batched (mathpe train)", "batched")):
        seconds = encoding.median(side)
        table.add(
            encoding=name,
            seconds=seconds,
            pairs_per_s=sizes.train_samples / seconds,
            ratio_vs_per_pair=encoding.ratio(side, "per_pair"),
        )
    table.notes.append(
        f"Generating the problems: {generation:.3f} s ({sizes.train_samples / generation:.0f} pairs/s). A study "
        "run prepares 200,512 pairs (training and validation) once, before its first step."
    )
    return table
