"""Every setting of a run, validated in one place with one-line errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch

from mathpe.cli.arguments import comma_list, int_list, json_object, key_values
from mathpe.data.arithmetic import ANSWER_FORMATS, check_digit_range
from mathpe.errors import ConfigError
from mathpe.eval.task_families.arithmetic import ARITHMETIC_OPS, VALIDATION_SAMPLES
from mathpe.eval.tasks import ArithmeticSettings, list_tasks
from mathpe.model.configuration import ARCHITECTURE_OVERRIDES, PRESETS, preset_config
from mathpe.pe import list_pes, pe_class
from mathpe.pe.registry import check_pe_options

#: PEs are tested at up to this multiple of the model's context length (or their own ``position_limit``).
MAX_LENGTH_MULTIPLE = 8

#: ``--eval_offsets``' help, for ``mathpe train`` and ``mathpe eval``.
EVAL_OFFSETS_HELP = (
    "abacus: answer by majority over greedy generations at these eval offsets, e.g. 0,10,20,30,40,50,60,70,80"
)

#: The settings ``--resume`` may change: the training budget, the checkpoint and logging cadence, speed (threads
#: and ``torch.compile``: floating-point rounding at most), evaluation batch size and where the run folder and
#: data are. Every other ``RunConfig`` field identifies
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
        "torch_compile",
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
    """One training + evaluation run. ``model_size`` is a preset or a transformers model id / path.

    The only definition of a run's settings: ``mathpe train`` and ``compare`` make a flag of every field
    (``mathpe.cli.arguments``: its default, ``metadata["help"]``, and ``metadata["parse"]`` for text that is not
    a plain number or string), config.json holds ``to_dict()`` and ``load`` reads it back. Construction checks
    that the settings fit together (``validate``); ``check_environment`` checks what the machine must
    provide, where a run starts.
    """

    pe: str = field(default="rope", metadata={"group": "model", "help": f"one of: {', '.join(list_pes())}"})
    pe_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "group": "model",
            "parse": json_object,
            "help": "JSON object of PE options, e.g. '{\"base\": 500000}' (see mathpe verify)",
        },
    )
    model_size: str = field(
        default="tiny",
        metadata={
            "group": "model",
            "help": f"a preset of mathpe's decoder ({', '.join(PRESETS)}; trained from scratch) or a "
            "transformers model id / local path (loaded pretrained, its PE swapped to --pe)",
        },
    )
    config_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "group": "model",
            "parse": key_values,
            "help": "decoder presets: change the preset's shape, e.g. num_layers=1,hidden_size=256 (keys: "
            f"{', '.join(ARCHITECTURE_OVERRIDES)})",
        },
    )
    use_lora: bool = field(
        default=False,
        metadata={"group": "model", "help": "train LoRA adapters (PEFT) and the PE's parameters"},
    )
    lora_r: int = field(default=8, metadata={"group": "model", "help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"group": "model", "help": "LoRA scaling alpha"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"group": "model", "help": "recompute activations in the backward pass"}
    )
    fp16: bool = field(default=False, metadata={"group": "model", "help": "fp16 mixed precision (CUDA only)"})
    bf16: bool = field(default=False, metadata={"group": "model", "help": "bf16 mixed precision"})
    datasets: tuple[str, ...] = field(
        default=("addition",),
        metadata={"group": "data", "parse": comma_list, "help": f"comma list of: {', '.join(list_tasks())}"},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"group": "data", "help": "folder with gsm8k/ and math/ JSONL files (default $MATHPE_DATA)"},
    )
    max_length: int | None = field(
        default=None, metadata={"group": "data", "help": "truncate training sequences to this many tokens"}
    )
    train_samples: int = field(
        default=20_000, metadata={"group": "data", "help": "training examples per dataset (at most)"}
    )
    eval_samples: int | None = field(
        default=None, metadata={"group": "data", "help": "evaluation items (per length for arithmetic)"}
    )
    arithmetic: ArithmeticSettings = field(default_factory=ArithmeticSettings, metadata={"group": "data"})
    batch_size: int = field(default=32, metadata={"group": "training", "help": "training examples per step"})
    max_steps: int | None = field(
        default=None, metadata={"group": "training", "help": "optimizer steps (default: --epochs)"}
    )
    epochs: float = field(
        default=1.0, metadata={"group": "training", "help": "passes over the training data"}
    )
    learning_rate: float | None = field(
        default=None, metadata={"group": "training", "help": "default 1e-3 from scratch, 2e-4 pretrained"}
    )
    warmup_steps: int = field(
        default=50,
        metadata={"group": "training", "help": "linear warm-up steps (at most a tenth of --max_steps)"},
    )
    curriculum_steps: int = field(
        default=0,
        metadata={
            "group": "training",
            "help": "arithmetic: admit operand lengths one by one over this many steps, shortest first (0: off)",
        },
    )
    randomized_positions: int | None = field(
        default=None,
        metadata={
            "group": "training",
            "help": "decoder presets: train on sorted random positions below this bound (Ruoss et al. 2023), "
            "e.g. 256",
        },
    )
    seed: int = field(default=0, metadata={"group": "training", "help": "seed of initialisation and data"})
    time_budget: float | None = field(
        default=None, metadata={"group": "training", "help": "seconds of training per run"}
    )
    save_steps: int = field(
        default=200, metadata={"group": "training", "help": "checkpoint every this many steps"}
    )
    logging_steps: int = field(
        default=10, metadata={"group": "training", "help": "log every this many steps"}
    )
    threads: int | None = field(
        default=None, metadata={"group": "training", "help": "torch threads (default: torch's choice)"}
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "group": "training",
            "help": "batch examples of similar length (Trainer's length-grouped sampler): less padding, "
            "another data order",
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "group": "training",
            "help": "compile the model with torch.compile (inductor): faster steps after a minute or more of "
            "compilation, so for runs of thousands of steps",
        },
    )
    eval_batch_size: int = field(
        default=64, metadata={"group": "training", "help": "prompts per generation batch"}
    )
    eval_offsets: tuple[int, ...] = field(
        default=(), metadata={"group": "training", "parse": int_list, "help": EVAL_OFFSETS_HELP}
    )
    select_best: bool = field(
        default=False,
        metadata={
            "group": "training",
            "help": "also evaluate the checkpoint with the lowest in-distribution validation loss (arithmetic)",
        },
    )
    probe_steps: int | None = field(
        default=None,
        metadata={
            "group": "training",
            "help": "arithmetic: every this many steps and at the last, greedy exact match on --probe_items "
            "held-out in-distribution problems per dataset; metrics.json's probe_history and steps_to_95",
        },
    )
    probe_items: int = field(
        default=200,
        metadata={
            "group": "training",
            "help": f"held-out problems per dataset that --probe_steps scores (at most {VALIDATION_SAMPLES})",
        },
    )
    experiment_name: str = field(
        default="mathpe", metadata={"group": "output", "help": "the run folder's name under runs/"}
    )
    output_dir: str | None = field(
        default=None, metadata={"group": "output", "help": "default runs/<experiment_name>"}
    )
    resume: bool = field(
        default=False,
        metadata={
            "group": "output",
            "help": "continue the run in the output folder from its newest intact checkpoint (same settings)",
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"group": "output", "help": "delete the run already in the output folder, then start"},
    )

    def __post_init__(self) -> None:
        # ``reverse_operands`` only means something in the reversed format; plain runs record False, as the
        # ``--format`` flag always did.
        if self.arithmetic.fmt == "plain" and self.arithmetic.reverse_operands:
            self.arithmetic = dataclasses.replace(self.arithmetic, reverse_operands=False)
        self.validate()

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
        return _from_json(cls, settings)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The config a run folder's config.json holds."""
        return cls.from_dict(read_config_json(Path(path)))

    def validate(self) -> RunConfig:
        """Raise ``ConfigError`` naming the first setting that is out of range or contradicts another.

        Called on construction; nothing here depends on the machine (see ``check_environment``).
        """
        check_pe_options(self.pe, self.pe_options)  # an unknown PE too
        bad = [name for name in self.datasets if name not in list_tasks()]
        if bad or not self.datasets:
            raise ConfigError(f"unknown dataset(s) {bad or '(none)'}; choose from: {', '.join(list_tasks())}")
        counts = {  # None: not set (the optional ones)
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "train_samples": self.train_samples,
            "save_steps": self.save_steps,
            "logging_steps": self.logging_steps,
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "eval_per_length": self.arithmetic.eval_per_length,
            "max_steps": self.max_steps,
            "eval_samples": self.eval_samples,
            "max_length": self.max_length,
            "threads": self.threads,
            "randomized_positions": self.randomized_positions,
            "probe_steps": self.probe_steps,
            "probe_items": self.probe_items,
        }
        for name, value in counts.items():
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
        if self.curriculum_steps and self.group_by_length:
            raise ConfigError(
                "--group_by_length and --curriculum_steps exclude each other: each orders the training data"
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
        if self.randomized_positions is not None and not self.is_preset:
            raise ConfigError(
                f"--randomized_positions needs mathpe's decoder (--model_size {', '.join(PRESETS)}), "
                f"not {self.model_size!r}"
            )
        self.check_config_overrides()
        if self.select_best and (self.use_lora or not self.arithmetic_only):
            raise ConfigError("--select_best needs arithmetic datasets and full fine-tuning (no --use_lora)")
        if self.probe_steps is not None and not self.arithmetic_only:
            raise ConfigError(
                f"--probe_steps needs arithmetic datasets only (the ones with held-out problems from the "
                f"training distribution); got {', '.join(self.datasets)}"
            )
        if self.probe_items > VALIDATION_SAMPLES:
            raise ConfigError(
                f"--probe_items {self.probe_items} is more than the {VALIDATION_SAMPLES} held-out problems "
                "per dataset"
            )
        for name in ("train_digits", "second_digits"):
            digits = getattr(self.arithmetic, name)
            if digits is not None:
                check_digit_range(f"--{name} {digits[0]}-{digits[1]}", *digits)
        if self.arithmetic.fuse_hints and not (
            self.arithmetic.index_hints and self.is_preset and self.arithmetic_only
        ):
            raise ConfigError(
                "--fuse_hints needs --index_hints, arithmetic datasets only and a preset model (it fuses the "
                "hints into tokens of mathpe's arithmetic tokenizer)"
            )
        if self.arithmetic.fmt not in ANSWER_FORMATS:
            raise ConfigError(f"--format {self.arithmetic.fmt!r} is not one of: {', '.join(ANSWER_FORMATS)}")
        return self

    def check_environment(self) -> None:
        """Raise ``ConfigError`` when this machine cannot start the run: fp16 without CUDA, a missing data
        folder or model directory. Called where a run starts, so a saved config loads anywhere."""
        if self.fp16 and not torch.cuda.is_available():
            raise ConfigError("--fp16 needs a CUDA GPU (none is visible); use --bf16 or fp32 on CPU")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ConfigError(f"--data_dir {self.data_dir!r} is not a directory")
        if not self.is_preset and _looks_like_path(self.model_size) and not Path(self.model_size).is_dir():
            raise ConfigError(
                f"--model_size {self.model_size!r} is neither a preset ({', '.join(PRESETS)}) nor a readable "
                "model directory"
            )

    def check_config_overrides(self) -> None:
        """``config_overrides``: a preset's own settings, with the types, ranges and head split ``MathPEConfig`` checks."""
        if not self.config_overrides:
            return
        if not self.is_preset:
            raise ConfigError(
                f"--config_overrides changes mathpe's decoder presets ({', '.join(PRESETS)}); "
                f"{self.model_size!r} is a pretrained model"
            )
        for key in self.config_overrides:
            if key not in ARCHITECTURE_OVERRIDES:
                raise ConfigError(
                    f"--config_overrides key {key!r} is not one of: {', '.join(ARCHITECTURE_OVERRIDES)}"
                )
        try:
            preset_config(self.model_size, **self.config_overrides)
        except ConfigError as error:
            raise ConfigError(f"--config_overrides: {error}") from error

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


def read_config_json(path: Path) -> dict[str, Any]:
    """The settings a run folder's config.json holds; a one-line ``ConfigError`` if it is missing or unreadable."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: {path.parent} is not a mathpe run folder")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({type(error).__name__})") from None


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


def _from_json(cls: type, settings: dict[str, Any]) -> Any:
    """Dataclass ``cls`` from its ``dataclasses.asdict`` read back from JSON: lists become the tuples the
    fields hold, dicts of nested dataclass fields their dataclass; keys that are not fields are ignored."""
    hints = get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name not in settings:
            continue
        kind, value = hints[item.name], settings[item.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _from_json(kind, value)
        elif isinstance(value, list) and tuple in {get_origin(arm) for arm in (kind, *get_args(kind))}:
            value = tuple(value)
        values[item.name] = value
    return cls(**values)


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``owner/name`` or ``name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1
