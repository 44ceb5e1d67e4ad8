"""GSM8K (``gsm8k``): grade-school word problems, graded as lm-evaluation-harness's ``gsm8k`` task."""

from __future__ import annotations

from mathpe.data.gsm8k import HUB_DATASET, load_gsm8k
from mathpe.data.jsonl import split_source
from mathpe.eval.grading import GSM8K_STOP_SEQUENCES, grade_gsm8k
from mathpe.eval.tasks import EvalItem, Task, TaskRequest, register_task, split_task


@register_task("gsm8k")
def gsm8k_task(request: TaskRequest) -> Task:
    """The first ``train_samples`` training problems and ``eval_samples`` test problems (None: all)."""
    return split_task(
        request,
        load_gsm8k,
        "test",
        lambda example: EvalItem(example.prompt(), example.answer, "all"),
        grade=grade_gsm8k,
        metrics=("strict_match", "flexible_extract"),
        max_new_tokens=256,
        stop=GSM8K_STOP_SEQUENCES,
        train_source=split_source("gsm8k", "train", request.data_dir, HUB_DATASET),
    )
