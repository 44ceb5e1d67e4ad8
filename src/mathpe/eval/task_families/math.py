"""MATH (``math``): competition problems, evaluated on MATH-500 and grouped by subject."""

from __future__ import annotations

from mathpe.data.jsonl import split_file
from mathpe.data.math import HUB_DATASET, load_math
from mathpe.eval.grading import MATH_STOP_SEQUENCES, grade_math
from mathpe.eval.tasks import EvalItem, Task, TaskRequest, register_task


@register_task("math")
def math_task(request: TaskRequest) -> Task:
    """The first ``train_samples`` training problems and ``eval_samples`` MATH-500 problems (None: all)."""
    data_dir = request.data_dir
    train = load_math("train", data_dir, limit=request.train_samples)
    test = load_math("test500", data_dir, limit=request.eval_samples)
    return Task(
        name=request.name,
        train_pairs=[example.training_pair() for example in train],
        eval_items=[EvalItem(example.prompt(), example.solution, example.type) for example in test],
        grade=grade_math,
        metrics=("math_verify", "is_equiv"),
        max_new_tokens=512,
        stop=MATH_STOP_SEQUENCES,
        train_source=str(split_file("math", "train", data_dir) or f"hub dataset {HUB_DATASET!r} (train)"),
    )
