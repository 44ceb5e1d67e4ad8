"""One run end to end: data, model, training, evaluation, and the run folder's outputs.

Run folder (``--output_dir``, default ``runs/<experiment_name>``):
    config.json        every setting, resolved PE options, the data's hash, mathpe's git commit, versions
    checkpoint-N/      Trainer checkpoints (atomic), for ``--resume``
    runs/              TensorBoard logs
    model/             the final model and tokenizer (``from_pretrained``-loadable), LoRA merged
    adapter/           LoRA runs of a pretrained model: the adapter in PEFT's format, the PE in modules_to_save
    metrics.json       per dataset: headline metrics, per group, in/out-of-distribution; training statistics
                       (with ``--probe_steps``: ``probe_history`` and ``steps_to_95``)
    predictions.jsonl  one line per evaluation item: prompt, completion, reference, verdicts
    report.md          the tables
    accuracy_by_length.png   for arithmetic datasets
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate
import torch
import transformers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import mathpe
from mathpe.data.collate import IGNORE_INDEX, PaddingCollator, encode_examples
from mathpe.errors import ConfigError, DataError
from mathpe.eval.evaluate import evaluate_task
from mathpe.eval.report import (
    length_curves,
    plot_accuracy_by_length,
    run_report,
    write_json,
    write_predictions,
    write_text,
)
from mathpe.eval.tasks import Task, build_task
from mathpe.train.config import RunConfig, differing_settings, read_config_json
from mathpe.train.setup import apply_lora, build_model, build_tokenizer, load_saved_model, resolved_pe_options
from mathpe.train.trainer import (
    MathPETrainer,
    NonFiniteLossCallback,
    ProbeCallback,
    TimeBudgetCallback,
    TrainingDivergedError,
    checkpoints,
    last_checkpoint,
    resume_checkpoint,
)

logger = logging.getLogger(__name__)

#: ``steps_to_95``: the first probed step (``--probe_steps``) with at least this exact match.
STEPS_TO_95_SCORE = 0.95
#: The run folder's LoRA adapter (PEFT's format), beside the merged ``model/``.
ADAPTER_DIR = "adapter"


@dataclass
class RunResult:
    """What a run produced: metrics per dataset, training statistics and where it all is."""

    run_dir: Path
    metrics: dict[str, dict[str, Any]]
    train: dict[str, Any] = field(default_factory=dict)
    #: With ``select_best``: the best-validation-loss checkpoint's path, loss and metrics per dataset.
    best: dict[str, Any] | None = None


def run_experiment(config: RunConfig, *, progress: bool = True) -> RunResult:
    """Train ``config.pe`` on ``config.datasets``, evaluate by generation and write the run folder."""
    config.check_environment()
    if not progress:
        transformers.utils.logging.disable_progress_bar()
    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    run_dir = config.run_dir
    tokenizer = build_tokenizer(config)
    tasks = build_tasks(config)
    identity = identity_settings(config, data_sha256(tasks))
    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun's global rank, before Trainer starts
    if main_process:
        claim_run_dir(config, identity)
    model = build_model(config, tokenizer)
    if main_process:
        write_json(run_dir / "config.json", {**run_settings(config, tokenizer, model), **identity})

    model, train_stats = train(config, model, tokenizer, tasks, progress=progress)
    # A from-scratch decoder's base weights are saved nowhere, so only a pretrained model's adapter is of use.
    if config.use_lora and not config.is_preset and train_stats["is_main_process"]:
        model.save_pretrained(run_dir / ADAPTER_DIR)
    trained = model.merge_and_unload() if config.use_lora else model
    if not train_stats["is_main_process"]:
        return RunResult(run_dir, {}, train_stats)
    trained.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    best = None
    if config.select_best and train_stats.get("best_checkpoint"):
        best = evaluate_checkpoint(
            config,
            tokenizer,
            tasks,
            train_stats["best_checkpoint"],
            validation_loss=train_stats["best_validation_loss"],
            device=trained.device,
            final_step=train_stats["steps"],
        )
    return evaluate_and_report(config, trained, tokenizer, tasks, train_stats, best=best, progress=progress)


def build_tasks(config: RunConfig) -> list[Task]:
    """The run's datasets as tasks: training pairs, evaluation items, grader."""
    return [
        build_task(
            name,
            seed=config.seed,
            train_samples=config.train_samples,
            eval_samples=config.eval_samples,
            data_dir=config.data_dir,
            arithmetic=config.arithmetic,
        )
        for name in config.datasets
    ]


def data_inputs(config: RunConfig) -> tuple:
    """What ``build_tasks`` draws the data from: runs that agree here (the PEs of one seed) have equal data."""
    return (
        tuple(config.datasets),
        config.seed,
        config.train_samples,
        config.eval_samples,
        config.data_dir,
        config.arithmetic,
    )


def data_sha256(tasks: list[Task]) -> str:
    """A hash of the data a run uses (training, validation and evaluation items of every task), so the same
    files under another ``--data_dir`` match and an edited file does not."""
    digest = hashlib.sha256()
    for task in tasks:
        items = [(item.prompt, item.reference, item.group) for item in task.eval_items]
        digest.update(json.dumps([task.name, task.train_pairs, task.validation_pairs, items]).encode())
    return digest.hexdigest()


def identity_settings(config: RunConfig, data_digest: str) -> dict[str, Any]:
    """What ``--resume`` compares with the run folder's config.json: every setting, and ``data_sha256``
    (``data_sha256(build_tasks(config))``)."""
    return {**config.to_dict(), "data_sha256": data_digest}


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished or partial run: its settings, metrics, model or a checkpoint."""
    return any((run_dir / name).exists() for name in ("config.json", "metrics.json", "model")) or bool(
        checkpoints(run_dir)
    )


def claim_run_dir(config: RunConfig, identity: dict[str, Any], *, trains: bool = True) -> None:
    """Make ``config.run_dir`` this run's before anything is written into it.

    A folder that holds a run is refused unless ``--overwrite`` (its contents are deleted) or ``--resume``
    with the same identity settings (``differing_settings``: everything but the budget-like
    ``RESUMABLE_SETTINGS``, plus the data's hash). Resuming under another mathpe commit warns, unless
    ``trains`` is False (a finished run that ``mathpe compare --resume`` only reads back).
    """
    run_dir = config.run_dir
    if not holds_run(run_dir):
        return
    if config.overwrite:
        shutil.rmtree(run_dir)
        return
    if not config.resume:
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume or replace it with --overwrite"
        )
    path = run_dir / "config.json"
    if not path.is_file():  # checkpoints without settings (a run from before config.json): nothing to compare
        return
    saved = read_config_json(path)
    differences = differing_settings(saved, identity)
    if differences:
        raise ConfigError(
            f"--resume: {run_dir} holds a run with other settings ({'; '.join(differences)}); "
            "choose another --output_dir, or --overwrite to replace it"
        )
    if not trains:
        return
    saved_commit, commit = (saved.get("source") or {}).get("commit"), source_revision()["commit"]
    if saved_commit and commit and saved_commit != commit:
        logger.warning(
            "--resume: %s was started at mathpe commit %s, this is %s: the run mixes two versions of the code",
            run_dir,
            saved_commit[:12],
            commit[:12],
        )


def source_revision() -> dict[str, Any]:
    """The git commit of mathpe's sources and whether their tracked files are unmodified.

    ``{"commit": None, "clean": None}`` when mathpe does not run from a git checkout (an installed wheel).
    """
    package = Path(mathpe.__file__).parent

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(package), *arguments], capture_output=True, text=True, timeout=30
        )

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode:  # an installed copy, not a checkout
            return {"commit": None, "clean": None}
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        modified = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git
        return {"commit": None, "clean": None}
    return {"commit": commit, "clean": not modified}


def evaluate_checkpoint(
    config: RunConfig,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    checkpoint: str | Path,
    *,
    validation_loss: float | None,
    device: torch.device,
    final_step: int | None = None,
) -> dict[str, Any]:
    """Metrics of a saved checkpoint on every task: the ``best_checkpoint`` entry of metrics.json.

    The checkpoint of ``final_step`` (the run's last step) holds the final model's weights, so it is not
    evaluated a second time: its entry has no ``datasets``, which ``evaluate_and_report`` fills in with the
    final model's metrics (greedy evaluation is deterministic, so they are the same numbers).
    """
    entry = {"checkpoint": str(checkpoint), "validation_loss": validation_loss}
    if final_step is not None and Path(checkpoint).name == f"{PREFIX_CHECKPOINT_DIR}-{final_step}":
        return entry
    model = load_saved_model(checkpoint, config).to(device)
    return {
        **entry,
        "datasets": {
            task.name: evaluate_task(
                model, tokenizer, task, batch_size=config.eval_batch_size, eval_offsets=config.eval_offsets
            )[0]
            for task in tasks
        },
    }


def run_settings(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel
) -> dict[str, Any]:
    """config.json: every setting, the resolved PE options, model size, code, machine and library versions."""
    return {
        **config.to_dict(),
        "resolved_pe_options": resolved_pe_options(config, tokenizer),
        "parameters": model.num_parameters(),
        "tokenizer": type(tokenizer).__name__,
        "source": source_revision(),
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "versions": library_versions(),
    }


def library_versions() -> dict[str, str]:
    """Versions of what a run's numbers depend on: mathpe, torch, transformers, accelerate, Python."""
    return {
        "mathpe": mathpe.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    """The CPU (model name, core count, the vector instructions torch's kernels use) and the OS."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # Linux names the CPU model in /proc/cpuinfo
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def training_arguments(config: RunConfig, *, progress: bool) -> TrainingArguments:
    """``TrainingArguments`` for the run: steps or epochs, precision, checkpointing, logging, data order, compile."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(config.run_dir),
        per_device_train_batch_size=config.batch_size,
        max_steps=config.max_steps or -1,
        num_train_epochs=config.epochs,
        learning_rate=config.resolved_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(config.warmup_steps, max(1, (config.max_steps or 10**9) // 10)),
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=config.seed,
        fp16=config.fp16,
        bf16=config.bf16,
        activation_checkpointing=config.gradient_checkpointing,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,  # the best checkpoint (with --select_best) is kept on top of these
        eval_strategy="steps" if config.select_best else "no",
        eval_steps=config.save_steps if config.select_best else None,
        per_device_eval_batch_size=config.eval_batch_size,
        metric_for_best_model="eval_loss" if config.select_best else None,
        greater_is_better=False if config.select_best else None,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,
        report_to=["tensorboard"],
        disable_tqdm=not progress,
        use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        torch_compile=config.torch_compile,
    )


def train(
    config: RunConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    *,
    progress: bool = True,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Train with ``MathPETrainer``; returns the trained model (PEFT-wrapped under LoRA) and statistics.

    Raises ``TrainingDivergedError`` when the loss turns NaN/inf.
    """
    if config.gradient_checkpointing:
        model.config.use_cache = False
    if config.use_lora:
        model = apply_lora(model, config)
    divergence, budget = NonFiniteLossCallback(), TimeBudgetCallback(config.time_budget or float("inf"))
    probe = None
    if config.probe_steps:  # after ``budget``, whose stop it probes at
        probe = ProbeCallback(
            config.probe_steps, tokenizer, tasks, items=config.probe_items, batch_size=config.eval_batch_size
        )
    trainer = build_trainer(
        config,
        model,
        tokenizer,
        tasks,
        callbacks=[divergence, budget, *([probe] if probe else [])],
        progress=progress,
    )
    features = trainer.train_dataset
    resume_from = resume_checkpoint(config.run_dir) if config.resume else None
    if config.resume and resume_from is None:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", config.run_dir)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if divergence.diverged_at is not None:
        kept = last_checkpoint(config.run_dir)
        raise TrainingDivergedError(
            f"the training loss became NaN/inf at step {divergence.diverged_at}; stopped. "
            f"Last good checkpoint: {kept or 'none'}. Try a lower --learning_rate or fp32/bf16."
        )
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    probed = {}
    if probe:
        probed = {"probe_history": probe.history, "steps_to_95": probe.first_step_at(STEPS_TO_95_SCORE)}
    return model, {
        "steps": trainer.state.global_step,
        "train_seconds": round(time.monotonic() - started, 2),
        "train_loss": output.training_loss,
        "final_logged_loss": history[-1]["loss"] if history else None,
        "loss_history": [(entry["step"], entry["loss"]) for entry in history],
        "stopped_by_time_budget": budget.stopped_at is not None,
        "resumed_from": str(resume_from) if resume_from else None,
        "examples": len(features),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_validation_loss": trainer.state.best_metric,
        "is_main_process": trainer.is_world_process_zero(),
        **probed,
    }


def build_trainer(
    config: RunConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    *,
    callbacks: list[TrainerCallback] | None = None,
    progress: bool = True,
) -> MathPETrainer:
    """The run's ``MathPETrainer``: its tasks' encoded training (and, with ``--select_best``, validation) data,
    right-padded batches, ``training_arguments`` and ``callbacks``."""
    features = [
        feature for task in tasks for feature in supervised_features(task, tokenizer, config.max_length)
    ]
    validation = [
        feature
        for task in tasks
        for feature in encode_examples(tokenizer, task.validation_pairs, config.max_length)
    ]
    trainer = MathPETrainer(
        model=model,
        args=training_arguments(config, progress=progress),
        train_dataset=features,
        eval_dataset=validation if config.select_best else None,
        data_collator=PaddingCollator(tokenizer.pad_token_id, padding_side="right"),
        callbacks=callbacks,
        train_levels=[level for task in tasks for level in task.train_levels],
        curriculum_steps=config.curriculum_steps,
    )
    # With the progress bar off, Trainer prints every log line instead; keep quiet runs quiet.
    if not progress:
        trainer.remove_callback(PrinterCallback)
    return trainer


def supervised_features(
    task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> list[dict[str, list[int]]]:
    """The task's encoded training pairs that keep an answer token within ``max_length``.

    A pair cut inside its prompt teaches nothing (and a batch of them has no loss at all): it is left out with
    a one-line warning; a ``DataError`` when none is left.
    """
    encoded = encode_examples(tokenizer, task.train_pairs, max_length)
    kept = [feature for feature in encoded if any(label != IGNORE_INDEX for label in feature["labels"])]
    if not kept:
        raise DataError(
            f"{task.train_source}: none of the {len(encoded)} {task.name} training examples keeps an answer token within "
            f"--max_length {max_length}; raise --max_length"
        )
    if len(kept) < len(encoded):
        logger.warning(
            "%s: %d of %d training examples have no answer token within --max_length %s; left out",
            task.train_source,
            len(encoded) - len(kept),
            len(encoded),
            max_length,
        )
    return kept


def evaluate_and_report(
    config: RunConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[Task],
    train_stats: dict[str, Any],
    *,
    best: dict[str, Any] | None = None,
    progress: bool = True,
) -> RunResult:
    """Evaluate every task by generation and write metrics, predictions, report and plot.

    ``best``: the best checkpoint's evaluation (``--select_best``), stored beside the final model's; without
    ``datasets`` when that checkpoint is the final model (``evaluate_checkpoint``).
    """
    run_dir = config.run_dir
    metrics, predictions = {}, []
    started = time.monotonic()
    for task in tasks:
        task_metrics, task_predictions = evaluate_task(
            model,
            tokenizer,
            task,
            batch_size=config.eval_batch_size,
            eval_offsets=config.eval_offsets,
            progress=progress,
        )
        metrics[task.name] = task_metrics
        predictions += task_predictions
    eval_seconds = round(time.monotonic() - started, 2)
    summary = {"train": train_stats, "eval_seconds": eval_seconds, "datasets": metrics}
    if config.eval_offsets:
        summary["eval_offsets"] = list(config.eval_offsets)
    if best is not None and "datasets" not in best:  # the best checkpoint is the final model
        best = {**best, "datasets": metrics}
    write_json(run_dir / "metrics.json", summary if best is None else {**summary, "best_checkpoint": best})
    write_predictions(run_dir / "predictions.jsonl", predictions)
    settings = {
        "pe": config.pe,
        "model": config.model_size,
        "steps": train_stats.get("steps"),
        "seed": config.seed,
    }
    if config.eval_offsets:
        settings["eval offset vote"] = ",".join(map(str, config.eval_offsets))
    write_text(run_dir / "report.md", run_report(f"mathpe run: {config.experiment_name}", settings, metrics))
    curves = {name: length_curves(m) for name, m in metrics.items() if length_curves(m)}
    if curves:
        plot_accuracy_by_length(
            curves,
            run_dir / "accuracy_by_length.png",
            title=f"{config.pe} on {config.model_size}",
            train_max=config.arithmetic.train_digits[1],
        )
    return RunResult(run_dir, metrics, {**train_stats, "eval_seconds": eval_seconds}, best)
