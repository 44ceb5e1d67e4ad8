"""Synthetic arithmetic (``addition``, ``subtraction``, ``multiplication``), generated per seed and graded by
exact match, with evaluation sets per operand length."""

from __future__ import annotations

from functools import partial
from typing import Any

from mathpe.data.arithmetic import ArithmeticTask, build_splits
from mathpe.eval.grading import extract_arithmetic_answer, grade_arithmetic
from mathpe.eval.tasks import EvalItem, Task, TaskRequest, register_task

#: ``--datasets`` name -> operator of ``mathpe.data.arithmetic``.
ARITHMETIC_OPS = {"addition": "add", "subtraction": "sub", "multiplication": "mul"}
#: Held-out pairs from the training distribution per task, for choosing the best checkpoint.
VALIDATION_SAMPLES = 512
#: Tokens a model may write past the longest answer (an EOS and one more) before generation stops.
ANSWER_MARGIN = 2


@register_task(*ARITHMETIC_OPS)
def arithmetic_task(request: TaskRequest) -> Task:
    """``request.eval_samples`` problems per evaluation length (None: ``arithmetic.eval_per_length``)."""
    name, settings, train_samples = request.name, request.arithmetic, request.train_samples
    low, high = settings.train_digits
    task = ArithmeticTask(
        ARITHMETIC_OPS[name],
        low,
        high,
        fmt=settings.fmt,
        zero_pad=settings.zero_pad,
        reverse_operands=settings.reverse_operands and settings.fmt == "reversed",
        second_digits=settings.second_digits,
        index_hints=settings.index_hints,
    )
    per_length = settings.eval_per_length if request.eval_samples is None else request.eval_samples
    # The validation pairs are drawn after the training pairs from the same generator (so the training set
    # of a seed does not depend on them), and like them exclude every evaluation problem.
    splits = build_splits(
        task, train_samples + VALIDATION_SAMPLES, request.seed, settings.eval_lengths, per_length
    )
    train, validation = splits.train[:train_samples], splits.train[train_samples:]
    items = [
        EvalItem(example.prompt, example.answer, length)
        for length, examples in splits.eval_by_length.items()
        for example in examples
    ]
    longest_answer = max(len(item.reference) for item in items)
    return Task(
        name=name,
        train_pairs=[(example.prompt, example.answer) for example in train],
        eval_items=items,
        grade=partial(_grade_arithmetic, fmt=settings.fmt, index_hints=settings.index_hints),
        metrics=("exact_match",),
        max_new_tokens=longest_answer + ANSWER_MARGIN,  # characters: a bound for any tokenizer
        answer_margin=ANSWER_MARGIN,
        train_groups=frozenset(range(low, high + 1)),
        validation_pairs=[(example.prompt, example.answer) for example in validation],
        train_levels=[example.operand_digits for example in train],
        train_source=f"generated {name} problems",
    )


def _grade_arithmetic(completion: str, reference: str, fmt: str, index_hints: bool = False) -> dict[str, Any]:
    """Exact match of the integer (the reference is the answer text in the task's format), and the answer read."""
    return {
        "exact_match": grade_arithmetic(completion, reference, fmt, index_hints),
        "predicted_answer": extract_arithmetic_answer(completion, fmt, index_hints),
    }
