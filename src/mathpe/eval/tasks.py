"""Tasks as data: what to train on, what to evaluate, how to grade, for each ``--datasets`` name.

Like lm-evaluation-harness's task YAMLs, a ``Task`` holds its training pairs, its evaluation items (each in
a group: the operand length for arithmetic, the subject for MATH), its grader and generation settings in
one declarative place; the pipeline treats every task the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mathpe.cli.arguments import digit_range, int_list
from mathpe.data.arithmetic import ArithmeticTask, build_splits
from mathpe.data.gsm8k import HUB_DATASET as GSM8K_HUB
from mathpe.data.gsm8k import load_gsm8k
from mathpe.data.jsonl import split_file
from mathpe.data.math import HUB_DATASET as MATH_HUB
from mathpe.data.math import load_math
from mathpe.eval.grading import (
    GSM8K_STOP_SEQUENCES,
    MATH_STOP_SEQUENCES,
    extract_arithmetic_answer,
    grade_arithmetic,
    grade_gsm8k,
    grade_math,
)

ARITHMETIC_OPS = {"addition": "add", "subtraction": "sub", "multiplication": "mul"}
TEXT_DATASETS = ("gsm8k", "math")
DATASETS = (*ARITHMETIC_OPS, *TEXT_DATASETS)
VALIDATION_SAMPLES = 512


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt with its reference and its reporting group."""

    prompt: str
    reference: str
    group: int | str


@dataclass(frozen=True)
class Task:
    """A dataset as the pipeline sees it.

    Attributes:
        name: the ``--datasets`` name.
        train_pairs: ``(prompt, target)`` pairs, loss on the target only.
        eval_items: evaluation prompts with references.
        grade: ``(completion, reference) -> {metric: verdict, ...}`` (extra non-bool keys are kept).
        metrics: names of the boolean verdicts ``grade`` returns, the first being the headline metric.
        max_new_tokens: generation budget per prompt.
        stop: strings that end a completion (besides EOS).
        train_groups: groups seen in training (in-distribution), for arithmetic length splits.
        validation_pairs: held-out pairs from the training distribution, for choosing the best checkpoint.
        train_levels: each training pair's difficulty for a length curriculum (arithmetic: its operand
            digits); empty for tasks without one.
        train_source: where the training pairs come from (a file, a hub dataset), for error messages.
    """

    name: str
    train_pairs: list[tuple[str, str]]
    eval_items: list[EvalItem]
    grade: Callable[[str, str], dict[str, Any]]
    metrics: tuple[str, ...]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    train_groups: frozenset[int | str] = field(default_factory=frozenset)
    validation_pairs: list[tuple[str, str]] = field(default_factory=list)
    train_levels: list[int] = field(default_factory=list)
    train_source: str = ""


@dataclass(frozen=True)
class ArithmeticSettings:
    """The synthetic-arithmetic recipe: training digit range, evaluation lengths and text format.

    ``fmt="reversed"`` writes every number least significant digit first, operands included (McLeish et al.
    2024), so digits of equal place value sit at equal offsets in their numbers; ``reverse_operands=False``
    reverses the answer only (Lee et al. 2023). ``second_digits`` gives the second operand a digit range of
    its own (``(1, 1)``: n-digit times one digit); the operand length of an evaluation set is then the
    first operand's. ``zero_pad`` pads operands to equal length and the answer to its longest; ``index_hints``
    puts a hint letter of its significance before every digit (Zhou et al. 2024; ``mathpe.data.arithmetic``),
    graded on the digits alone.
    """

    train_digits: tuple[int, int] = field(
        default=(1, 8), metadata={"parse": digit_range, "help": "arithmetic operand digits, e.g. 1-8"}
    )
    second_digits: tuple[int, int] | None = field(
        default=None,
        metadata={
            "parse": digit_range,
            "help": "the second operand's digits when they differ from --train_digits, e.g. 1 (n-digit x 1-digit)",
        },
    )
    eval_lengths: tuple[int, ...] = field(
        default=tuple(range(1, 17)),
        metadata={"parse": int_list, "help": "arithmetic eval lengths, e.g. 1-16,20"},
    )
    fmt: str = field(
        default="reversed",
        metadata={"flag": "format", "help": "arithmetic answer format: reversed (default) or plain"},
    )
    reverse_operands: bool = field(
        default=True,
        metadata={"help": "arithmetic, reversed format: operands in reading order, only the answer reversed"},
    )
    zero_pad: bool = field(
        default=False,
        metadata={
            "help": "arithmetic: operands zero-padded to the longer one's length, the answer to its longest "
            "possible length"
        },
    )
    eval_per_length: int = field(
        default=100, metadata={"help": "arithmetic: evaluation items per length without --eval_samples"}
    )
    index_hints: bool = field(
        default=False,
        metadata={
            "help": "arithmetic: a hint letter of its significance before every digit (a3b2c1+a5b4=a8b6c1)"
        },
    )


def build_task(
    name: str,
    *,
    seed: int,
    train_samples: int,
    eval_samples: int | None,
    data_dir: str | Path | None = None,
    arithmetic: ArithmeticSettings | None = None,
) -> Task:
    """Build the task ``name`` (one of ``DATASETS``).

    ``eval_samples`` caps the evaluation items (per length for arithmetic, in total otherwise; None: all).
    """
    if name in ARITHMETIC_OPS:
        return _arithmetic_task(name, seed, train_samples, eval_samples, arithmetic or ArithmeticSettings())
    if name == "gsm8k":
        train = load_gsm8k("train", data_dir, limit=train_samples)
        test = load_gsm8k("test", data_dir, limit=eval_samples)
        return Task(
            name=name,
            train_pairs=[example.training_pair() for example in train],
            eval_items=[EvalItem(example.prompt(), example.answer, "all") for example in test],
            grade=grade_gsm8k,
            metrics=("strict_match", "flexible_extract"),
            max_new_tokens=256,
            stop=GSM8K_STOP_SEQUENCES,
            train_source=str(split_file("gsm8k", "train", data_dir) or f"hub dataset {GSM8K_HUB!r} (train)"),
        )
    if name == "math":
        train = load_math("train", data_dir, limit=train_samples)
        test = load_math("test500", data_dir, limit=eval_samples)
        return Task(
            name=name,
            train_pairs=[example.training_pair() for example in train],
            eval_items=[EvalItem(example.prompt(), example.solution, example.type) for example in test],
            grade=grade_math,
            metrics=("math_verify", "is_equiv"),
            max_new_tokens=512,
            stop=MATH_STOP_SEQUENCES,
            train_source=str(split_file("math", "train", data_dir) or f"hub dataset {MATH_HUB!r} (train)"),
        )
    raise ValueError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")


def _arithmetic_task(
    name: str, seed: int, train_samples: int, eval_samples: int | None, settings: ArithmeticSettings
) -> Task:
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
    per_length = settings.eval_per_length if eval_samples is None else eval_samples
    # The validation pairs are drawn after the training pairs from the same generator (so the training set
    # of a seed does not depend on them), and like them exclude every evaluation problem.
    splits = build_splits(task, train_samples + VALIDATION_SAMPLES, seed, settings.eval_lengths, per_length)
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
        max_new_tokens=longest_answer + 2,
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
