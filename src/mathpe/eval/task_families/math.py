"""MATH (``math``): competition problems, evaluated on MATH-500 and grouped by subject."""

from __future__ import annotations

from mathpe.data.jsonl import split_source
from mathpe.data.math import HUB_DATASET, load_math
from mathpe.eval.grading import MATH_STOP_SEQUENCES, grade_math
from mathpe.eval.tasks import EvalItem, Task, TaskRequest, register_task, split_task


@register_task("math")
def math_task(request: TaskRequest) -> Task:
    """The first ``train_samples`` training problems and ``eval_samples`` MATH-500 problems (None: all)."""
    return split_task(
        request,
        load_math,
        "test500",
        lambda example: EvalItem(example.prompt(), example.solution, example.type),
        grade=grade_math,
        metrics=("math_verify", "is_equiv"),
        max_new_tokens=512,
        stop=MATH_STOP_SEQUENCES,
        train_source=split_source("math", "train", request.data_dir, HUB_DATASET),
    )
