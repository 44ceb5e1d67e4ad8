"""Every setting of a run, validated in one place with one-line errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mathpe.errors import ConfigError
from mathpe.eval.task_families.arithmetic import ARITHMETIC_OPS
from mathpe.eval.tasks import ArithmeticSettings, list_tasks
from mathpe.model.configuration import PRESETS
from mathpe.pe import list_pes, pe_class, pe_options

#: PEs are tested at up to this multiple of the model's context length (or their own ``position_limit``).
MAX_LENGTH_MULTIPLE = 8

#: The settings ``--resume`` may change: the training budget, the checkpoint and logging cadence, speed,
#: evaluation batch size and where the run folder and data are. Every other ``RunConfig`` field identifies
#: the run and must equal the run folder's config.json (the data itself is compared by its hash, so
#: ``data_dir`` may move). A new field is therefore part of a run's identity unless it is listed here.
RESUMABLE_SETTINGS: frozenset[str] = frozenset(
    {
        "max_steps",
        "epochs",
        "time_budget",
        "save_steps",
        "logging_steps",
        "threads",
        "eval_batch_size",
        "output_dir",
        "resume",
        "overwrite",
        "experiment_name",
        "data_dir",
    }
)


@dataclass
class RunConfig:
    """One training + evaluation run. ``model_size`` is a preset or a transformers model id / path."""

    pe: str = "rope"
    pe_options: dict[str, Any] = field(default_factory=dict)
    model_size: str = "tiny"
    datasets: tuple[str, ...] = ("addition",)
    data_dir: str | None = None
    batch_size: int = 32
    max_length: int | None = None
    use_lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    fp16: bool = False
    bf16: bool = False
    max_steps: int | None = None
    epochs: float = 1.0
    learning_rate: float | None = None
    warmup_steps: int = 50
    curriculum_steps: int = 0
    seed: int = 0
    train_samples: int = 20_000
    eval_samples: int | None = None
    eval_batch_size: int = 64
    eval_offsets: tuple[int, ...] = ()
    experiment_name: str = "mathpe"
    output_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    time_budget: float | None = None
    save_steps: int = 200
    logging_steps: int = 10
    threads: int | None = None
    randomized_positions: int | None = None
    select_best: bool = False
    arithmetic: ArithmeticSettings = field(default_factory=ArithmeticSettings)

    @property
    def is_preset(self) -> bool:
        return self.model_size in PRESETS

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.experiment_name

    @property
    def arithmetic_only(self) -> bool:
        return all(name in ARITHMETIC_OPS for name in self.datasets)

    @property
    def resolved_learning_rate(self) -> float:
        """1e-3 for models trained from scratch, 2e-4 for fine-tuning a pretrained model."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.is_preset else 2e-4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> RunConfig:
        """The config ``to_dict`` wrote to JSON (config.json, comparison.json); other keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in settings.items() if key in names}
        values["arithmetic"] = ArithmeticSettings(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in values.get("arithmetic", {}).items()
            }
        )
        for name in ("datasets", "eval_offsets"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def validate(self) -> RunConfig:
        """Raise ``ConfigError`` naming the first bad setting; return self when all are fine."""
        if self.pe not in list_pes():
            raise ConfigError(f"unknown PE {self.pe!r}; choose one of: {', '.join(list_pes())}")
        unknown = sorted(set(self.pe_options) - set(pe_options(self.pe)))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for PE {self.pe!r}; allowed: {sorted(pe_options(self.pe))}"
            )
        bad = [name for name in self.datasets if name not in list_tasks()]
        if bad or not self.datasets:
            raise ConfigError(f"unknown dataset(s) {bad or '(none)'}; choose from: {', '.join(list_tasks())}")
        for name in (
            "batch_size",
            "eval_batch_size",
            "train_samples",
            "save_steps",
            "logging_steps",
            "lora_r",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("max_steps", "eval_samples", "max_length", "threads", "randomized_positions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {value}")
        if self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.curriculum_steps < 0:
            raise ConfigError(
                f"--curriculum_steps must be >= 0 (0: no curriculum), got {self.curriculum_steps}"
            )
        if self.curriculum_steps and not self.arithmetic_only:
            raise ConfigError(
                f"--curriculum_steps {self.curriculum_steps} needs arithmetic datasets only (the curriculum "
                f"orders problems by operand digits); got {', '.join(self.datasets)}"
            )
        self.check_eval_offsets()
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
        if self.fp16 and self.bf16:
            raise ConfigError("--fp16 and --bf16 exclude each other; choose one")
        if self.fp16 and not torch.cuda.is_available():
            raise ConfigError("--fp16 needs a CUDA GPU (none is visible); use --bf16 or fp32 on CPU")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ConfigError(f"--data_dir {self.data_dir!r} is not a directory")
        if self.randomized_positions is not None and not self.is_preset:
            raise ConfigError(
                f"--randomized_positions needs mathpe's decoder (--model_size {', '.join(PRESETS)}), "
                f"not {self.model_size!r}"
            )
        if not self.is_preset and _looks_like_path(self.model_size) and not Path(self.model_size).is_dir():
            raise ConfigError(
                f"--model_size {self.model_size!r} is neither a preset ({', '.join(PRESETS)}) nor a readable "
                "model directory"
            )
        if self.select_best and (self.use_lora or not self.arithmetic_only):
            raise ConfigError("--select_best needs arithmetic datasets and full fine-tuning (no --use_lora)")
        low, high = self.arithmetic.train_digits
        if not 1 <= low <= high:
            raise ConfigError(f"train digits {low}-{high} must satisfy 1 <= min <= max")
        if self.arithmetic.second_digits is not None:
            low, high = self.arithmetic.second_digits
            if not 1 <= low <= high:
                raise ConfigError(f"--second_digits {low}-{high} must satisfy 1 <= min <= max")
        return self

    def check_eval_offsets(self) -> None:
        """Raise ``ConfigError`` unless ``eval_offsets`` is empty or names eval variants of the PE (``abacus``'s
        offsets 0..max_offset: ``PositionalEncoding.eval_variants``)."""
        if not self.eval_offsets:
            return
        variants = pe_class(self.pe).eval_variants(self.pe_options)
        if not variants:
            with_variants = [name for name in list_pes() if pe_class(name).eval_variants({})]
            raise ConfigError(
                f"--eval_offsets needs a PE trained with a random offset (one with eval-time variants: "
                f"{', '.join(with_variants)}), not {self.pe!r}"
            )
        bad = [value for value in self.eval_offsets if value not in variants]
        if bad:
            limit = pe_class(self.pe).eval_variant_limit_option
            raise ConfigError(f"--eval_offsets {bad} outside 0..{variants.stop - 1} (the PE's {limit})")

    def check_max_length(self, context_length: int) -> None:
        """Raise ``ConfigError`` when ``max_length`` exceeds what the model's PE supports."""
        if self.max_length is None:
            return
        limit = pe_class(self.pe).position_limit(context_length)
        if limit is not None and self.max_length > limit:
            why = f"PE {self.pe!r} supports {limit} positions with a {context_length}-token context"
        elif self.max_length > MAX_LENGTH_MULTIPLE * context_length:
            why = f"mathpe supports up to {MAX_LENGTH_MULTIPLE}x the model's {context_length}-token context"
        else:
            return
        raise ConfigError(f"--max_length {self.max_length} is beyond what the model supports: {why}")


def differing_settings(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``"name: saved -> requested"`` for each identity setting (not in ``RESUMABLE_SETTINGS``) that differs.

    Both are config.json-style dicts (JSON values); nested dicts (``arithmetic``) are compared key by key.
    A setting the saved run does not record (an older mathpe) is not compared.
    """
    differences = []
    for name, value in json.loads(json.dumps(requested)).items():
        if name in RESUMABLE_SETTINGS or name not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[name], dict):
            differences += [f"{name}.{item}" for item in differing_settings(saved[name], value)]
        elif saved[name] != value:
            differences.append(f"{name}: {saved[name]!r} -> {value!r}")
    return differences


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``owner/name`` or ``name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1
