"""``mathpe eval RUN_DIR``: evaluate a finished run's saved model again (other samples, other data dir)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mathpe.data.tokenizer import ArithmeticTokenizer
from mathpe.errors import ConfigError
from mathpe.eval.tasks import build_task
from mathpe.train.config import RunConfig, read_config_json
from mathpe.train.run import evaluate_and_report, evaluate_checkpoint
from mathpe.train.setup import load_saved_model

logger = logging.getLogger(__name__)


def load_run_config(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The ``RunConfig`` a run was made with, and the raw config.json."""
    raw = read_config_json(run_dir / "config.json")
    return RunConfig.from_dict(raw), raw


def load_run_tokenizer(model_dir: Path, tokenizer_class: str) -> PreTrainedTokenizerBase:
    if tokenizer_class == ArithmeticTokenizer.__name__:
        return ArithmeticTokenizer.from_pretrained(model_dir)
    return AutoTokenizer.from_pretrained(model_dir, padding_side="left")


def evaluate_saved_run(
    run_dir: Path,
    *,
    eval_samples: int | None = None,
    data_dir: str | None = None,
    eval_offsets: tuple[int, ...] | None = None,
) -> dict[str, dict[str, Any]]:
    """Re-evaluate ``run_dir/model`` on the run's datasets; rewrites metrics, predictions, report, plot.

    ``eval_offsets`` (abacus) replaces the run's own; ``()`` turns the offset vote off.
    """
    config, raw = load_run_config(run_dir)
    config = dataclasses.replace(
        config,
        output_dir=str(run_dir),
        eval_samples=eval_samples or config.eval_samples,
        data_dir=data_dir or config.data_dir,
        eval_offsets=config.eval_offsets if eval_offsets is None else eval_offsets,
    )
    if config.threads:
        torch.set_num_threads(config.threads)
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise ConfigError(
            f"{model_dir} not found: the run has not finished (continue it with mathpe train --resume)"
        )
    tokenizer = load_run_tokenizer(model_dir, raw.get("tokenizer", ""))
    model = load_saved_model(model_dir, config)
    tasks = [
        build_task(
            name,
            seed=config.seed,
            train_samples=1,
            eval_samples=config.eval_samples,
            data_dir=config.data_dir,
            arithmetic=config.arithmetic,
        )
        for name in config.datasets
    ]
    previous = (
        json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    )
    best = None
    if "best_checkpoint" in previous:  # evaluated again with the same settings, so both entries agree
        # By name inside run_dir: the stored path is where the run was made, and run folders get moved.
        checkpoint = run_dir / Path(previous["best_checkpoint"]["checkpoint"]).name
        if checkpoint.is_dir():
            best = evaluate_checkpoint(
                config,
                tokenizer,
                tasks,
                checkpoint,
                validation_loss=previous["best_checkpoint"]["validation_loss"],
                device=model.device,
                final_step=previous.get("train", {}).get("steps"),
            )
        else:
            logger.warning(
                "best checkpoint %s is gone; metrics.json now holds the final model's evaluation only",
                checkpoint,
            )
    train_stats = previous.get("train", {})
    return evaluate_and_report(
        config, model, tokenizer, tasks, train_stats, best=best, progress=False
    ).metrics
