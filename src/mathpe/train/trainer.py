"""Training on the Hugging Face ``Trainer``: atomic checkpoints, resume, divergence and time-budget stops.

``Trainer`` already brings data parallelism (``torchrun`` / ``accelerate launch``), mixed precision,
gradient checkpointing, TensorBoard logs, a progress bar and exact resumption (optimizer, scheduler, RNG
and data position). What it lacks, and this module adds:
- checkpoints written atomically: saved into a staging folder, then renamed into place, so a run killed
  mid-save never leaves a half-written ``checkpoint-N`` for ``--resume`` to pick up;
- ``--resume`` from the newest intact checkpoint, skipping ones damaged after the fact (``checkpoint_problem``);
- the PE's own parameters saved with LoRA checkpoints (PEFT saves adapters only);
- a stop with a clear message when the loss turns NaN/inf, keeping the last good checkpoint;
- a wall-clock budget per run (``--time_budget``);
- a periodic probe of exact match on held-out in-distribution problems, kept across ``--resume``
  (``--probe_steps``);
- an optional length curriculum as the training sampler (``--curriculum_steps``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mathpe.compat import TrainerHooks
from mathpe.errors import ConfigError, error_summary
from mathpe.eval.evaluate import evaluate_task
from mathpe.eval.tasks import Task
from mathpe.pe import PositionalEncoding
from mathpe.train.curriculum import LengthCurriculumSampler

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
PE_STATE_FILE = "mathpe_pe.safetensors"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class MathPETrainer(TrainerHooks):
    """``Trainer`` with atomic checkpoints, the PE's parameters saved beside PEFT adapters and a curriculum.

    ``train_levels`` (one difficulty per training example) with ``curriculum_steps`` > 0 replaces the random
    training order by a ``LengthCurriculumSampler``.
    """

    def __init__(
        self, *args: Any, train_levels: Sequence[int] = (), curriculum_steps: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if curriculum_steps and len(train_levels) != len(self.train_dataset):
            raise ValueError(
                f"a curriculum needs one level per training example: {len(train_levels)} levels for "
                f"{len(self.train_dataset)} examples"
            )
        self.train_levels = train_levels
        self.curriculum_steps = curriculum_steps

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """``Trainer.log``; a training log (one with ``loss``) also carries the probe's score taken since the
        last one (``probe_exact_match``, ``ProbeCallback``), so it shows beside the loss in the progress output,
        TensorBoard and ``log_history``."""
        probe = next((cb for cb in self.callback_handler.callbacks if isinstance(cb, ProbeCallback)), None)
        if probe is not None and probe.unlogged is not None and "loss" in logs:
            logs = {**logs, "probe_exact_match": probe.unlogged}
            probe.unlogged = None
        super().log(logs, *args, **kwargs)

    def training_sampler(self) -> torch.utils.data.Sampler | None:
        """The length curriculum when there is one, else ``Trainer``'s random order."""
        if not self.curriculum_steps:
            return None
        args = self.args
        return LengthCurriculumSampler(
            self.train_levels,
            self.curriculum_steps,
            args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
            seed=args.seed,
        )

    def save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """``Trainer``'s checkpoint written into ``.staging/``, then renamed into the run folder."""
        run_dir = Path(self.args.output_dir)
        staging_root = run_dir / STAGING_DIR
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging_root / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.save_checkpoint_into(str(staging_root), model, trial)
        if self.args.should_save and _is_peft(self.model):
            save_file(_pe_state(self.model), str(staging_root / name / PE_STATE_FILE))
        self.accelerator.wait_for_everyone()
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent == staging_root:  # recorded while saving into staging
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        if self.args.should_save:
            self.state.save_to_json(str(staging_root / name / TRAINER_STATE_NAME))
            shutil.rmtree(run_dir / name, ignore_errors=True)
            os.replace(staging_root / name, run_dir / name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
        self.accelerator.wait_for_everyone()

    def checkpoint_loaded(self, checkpoint: str, model: torch.nn.Module | None) -> None:
        """Load the PE's parameters saved beside a PEFT adapter."""
        pe_file = Path(checkpoint) / PE_STATE_FILE
        if pe_file.exists():
            target = model if model is not None else self.model
            state = load_file(str(pe_file))
            current = dict(target.named_parameters())
            with torch.no_grad():
                for key, value in state.items():
                    current[key].copy_(value)


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _pe_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Named parameters of the model's PE modules (names as in ``model.named_parameters()``)."""
    pe_parameters = {
        id(p) for m in model.modules() if isinstance(m, PositionalEncoding) for p in m.parameters()
    }
    return {
        name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if id(p) in pe_parameters
    }


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first logged NaN/inf loss, without saving, so the last checkpoint stays the last good one."""

    def __init__(self) -> None:
        self.diverged_at: int | None = None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **_,
    ) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = state.global_step
            control.should_training_stop = True
            control.should_save = False


class ProbeCallback(TrainerCallback, ExportableState):
    """Every ``every`` optimizer steps and at the last, greedy exact match on held-out in-distribution problems.

    Scores the first ``items`` validation pairs of each task (``Task.on_validation_pairs``) with the task's
    grader through ``evaluate_task``, on the main process only, and records ``history``: ``[step, score]``
    pairs, the score being the mean over tasks of the headline metric; ``MathPETrainer.log`` adds each score to
    the next training log. ``first_step_at(0.95)`` is the run's learning speed. Greedy generation draws no
    random numbers, and the model's train mode and the tokenizer's padding side are put back, so probing
    leaves training as it was.

    The history is saved in checkpoints as ``TrainerState.stateful_callbacks`` (``state()``) and read back
    in ``on_train_begin``, when ``--resume`` has loaded that state: a resumed run's history is an
    uninterrupted one's. (``Trainer``'s own restoring, ``restore_callback_states_from_checkpoint``, would
    rebuild the callback from its JSON arguments, without its tokenizer and tasks.)
    """

    def __init__(
        self,
        every: int,
        tokenizer: PreTrainedTokenizerBase | None = None,
        tasks: Sequence[Task] = (),
        *,
        items: int = 200,
        batch_size: int = 64,
    ) -> None:
        self.every = every
        self.tokenizer = tokenizer
        self.tasks = [task.on_validation_pairs(items) for task in tasks if task.validation_pairs]
        self.batch_size = batch_size
        self.history: list[list[float]] = []
        self.unlogged: float | None = None  # the latest score not yet in a training log

    def state(self) -> dict[str, Any]:
        return {"args": {"every": self.every}, "attributes": {"history": self.history}}

    def first_step_at(self, score: float) -> int | None:
        """The first probed step whose score is at least ``score``; None when none is."""
        return next((int(step) for step, value in self.history if value >= score), None)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_
    ) -> None:
        # A resumed run's state holds the history saved with its checkpoint; a new run's holds this one's.
        # (setdefault: a checkpoint saved without this callback gets an entry, which Trainer's save expects.)
        saved = state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        self.history = [list(entry) for entry in saved["attributes"]["history"]]

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **_,
    ) -> None:
        # ``should_training_stop`` is set by then at the last step (``DefaultFlowCallback``) and by a
        # time-budget stop (``TimeBudgetCallback``, when it is listed before this callback).
        last = control.should_training_stop
        if state.is_world_process_zero and (state.global_step % self.every == 0 or last):
            score = self.score(model)
            self.history.append([state.global_step, score])
            self.unlogged = score

    def score(self, model: PreTrainedModel) -> float:
        """Mean over the tasks of the headline metric on their held-out problems; ``model`` is left as found."""
        training, padding_side = model.training, self.tokenizer.padding_side
        try:
            scores = []
            for task in self.tasks:
                metrics, _ = evaluate_task(model, self.tokenizer, task, batch_size=self.batch_size)
                scores.append(metrics[metrics["headline"]])
        finally:
            model.train(training)
            self.tokenizer.padding_side = padding_side
        return sum(scores) / len(scores)


class TimeBudgetCallback(TrainerCallback):
    """Stop training (and save) once ``seconds`` of wall-clock training have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = 0.0
        self.stopped_at: int | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_
    ) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_) -> None:
        if time.monotonic() - self.started >= self.seconds:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True


def checkpoints(run_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of a run folder, newest (largest N) first."""
    found = [
        path
        for path in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.split("-")[-1].isdigit()
    ]
    return sorted(found, key=lambda path: int(path.name.split("-")[-1]), reverse=True)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    return next(iter(checkpoints(run_dir)), None)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``Trainer`` could not resume from ``checkpoint`` (a file missing, truncated or unreadable), or None.

    Cheap, no tensor is read: trainer_state.json must parse, every safetensors file must open (safetensors
    checks its header against the file size) and every torch-saved file (optimizer, scheduler, RNG state)
    must end in its zip directory, which a truncated file lacks. Checkpoints are written atomically, so this
    catches damage after the fact: a full disk, a killed copy, a file system error.
    """
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError) as error:
        return f"{TRAINER_STATE_NAME}: {type(error).__name__}"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own SafetensorError, or OSError
            return f"{path.name}: {error_summary(error)}"
    for path in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]):
        if not zipfile.is_zipfile(path):
            return f"{path.name}: truncated or not a torch file"
    return None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` to resume from (None when there is none at all).

    Damaged newer checkpoints are skipped with a one-line warning; a ``ConfigError`` when every checkpoint
    is damaged.
    """
    damaged = []
    for checkpoint in checkpoints(run_dir):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if damaged:
                logger.warning(
                    "--resume: skipping damaged %s; resuming from %s", ", ".join(damaged), checkpoint
                )
            return checkpoint
        damaged.append(f"{checkpoint.name} ({problem})")
    if damaged:
        raise ConfigError(
            f"--resume: no intact checkpoint in {run_dir}: {', '.join(damaged)}; start again with --overwrite"
        )
    return None
