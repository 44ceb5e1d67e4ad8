"""Evaluation by generation: batched, left-padded, greedy by default; graded per item and per group."""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mathpe.errors import ConfigError
from mathpe.eval.grading import truncate_at_stop
from mathpe.eval.tasks import Task
from mathpe.pe import PositionalEncoding


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    stop: tuple[str, ...] = (),
    do_sample: bool = False,
    progress: bool = False,
) -> list[str]:
    """Completions of ``prompts`` (without the prompt), cut at EOS and at the first stop string.

    Prompts are sorted by length so batches carry little padding, and left-padded so every row's last
    token is its prompt's last token.
    """
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    completions: list[str] = [""] * len(prompts)
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        encoded = tokenizer(
            [prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        for row, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            completions[row] = truncate_at_stop(text, stop)
    return completions


def offset_vote_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    offsets: Sequence[int],
    **generate_options: Any,
) -> tuple[list[str], list[int]]:
    """The most common completion of each prompt over greedy generations at each of the PE's eval variants.

    A test-time ensemble for PEs trained with random variants (``PositionalEncoding.eval_variants``: the
    offset of ``abacus``): the variant is a nuisance the model was trained to ignore, yet past the training
    length its answers depend on it, and where they disagree the majority is more often right. mathpe's own
    (no library offers it). Ties go to the offset listed first. ``generate_options`` are passed to
    ``generate_completions``.

    Returns:
        ``(completions, votes)``: the winning completion per prompt and how many offsets produced it.
    """
    encodings = [
        module
        for module in model.modules()
        if isinstance(module, PositionalEncoding) and module.eval_variants(module.constructor_options)
    ]
    if not encodings:
        raise ConfigError(
            f"eval offsets {list(offsets)} need a PE with a random training offset (one with eval-time "
            "variants); this model has none"
        )
    per_offset = []
    for offset in offsets:
        with contextlib.ExitStack() as variants:
            for encoding in encodings:  # the PE, and PEFT's trainable copy of it when there is one
                variants.enter_context(encoding.using_eval_variant(offset))
            per_offset.append(generate_completions(model, tokenizer, prompts, **generate_options))
    winners = [Counter(candidates).most_common(1)[0] for candidates in zip(*per_offset, strict=True)]
    return [completion for completion, _ in winners], [votes for _, votes in winners]


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    batch_size: int = 32,
    eval_offsets: Sequence[int] = (),
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate for every evaluation item of ``task`` and grade it.

    ``eval_offsets``: when given, each answer is the majority over these eval variants of the PE
    (``offset_vote_completions``) and each prediction records its ``offset_votes``.

    Returns:
        ``(metrics, predictions)``: metrics holds each metric overall, per group (``by_group``), and for
        arithmetic the in- and out-of-distribution means over lengths; predictions holds one record per
        item (prompt, completion, reference, group, verdicts and extracted answers).
    """
    prompts = [item.prompt for item in task.eval_items]
    options = {
        "max_new_tokens": task.generation_budget(tokenizer),
        "batch_size": batch_size,
        "stop": task.stop,
        "progress": progress,
    }
    votes: list[int | None] = [None] * len(prompts)
    if eval_offsets:
        completions, votes = offset_vote_completions(model, tokenizer, prompts, eval_offsets, **options)
    else:
        completions = generate_completions(model, tokenizer, prompts, **options)
    predictions = []
    for item, completion, vote in zip(task.eval_items, completions, votes, strict=True):
        verdict = task.grade(completion, item.reference)
        record = {
            "dataset": task.name,
            "group": item.group,
            "prompt": item.prompt,
            "completion": completion,
            "reference": item.reference,
            **verdict,
        }
        if vote is not None:
            record["offset_votes"] = vote
        predictions.append(record)
    return summarise(task, predictions), predictions


def summarise(task: Task, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per metric overall and per group; in/out-of-distribution means for length groups."""
    by_group: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for prediction in predictions:
        by_group[prediction["group"]].append(prediction)
    metrics: dict[str, Any] = {"dataset": task.name, "n": len(predictions), "headline": task.metrics[0]}
    for metric in task.metrics:
        metrics[metric] = _mean(p[metric] for p in predictions)
        per_group = {str(group): _mean(p[metric] for p in rows) for group, rows in sorted(by_group.items())}
        metrics.setdefault("by_group", {})[metric] = per_group
        if task.train_groups:
            inside = [acc for group, acc in per_group.items() if _group_key(group) in task.train_groups]
            outside = [acc for group, acc in per_group.items() if _group_key(group) not in task.train_groups]
            metrics[f"{metric}_in_distribution"] = sum(inside) / len(inside) if inside else None
            metrics[f"{metric}_out_of_distribution"] = sum(outside) / len(outside) if outside else None
    return metrics


def _mean(verdicts) -> float:
    values = [bool(v) for v in verdicts]
    return sum(values) / len(values) if values else 0.0


def _group_key(group: str) -> int | str:
    return int(group) if group.isdigit() else group
