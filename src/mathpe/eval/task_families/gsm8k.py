"""GSM8K (``gsm8k``): grade-school word problems, graded as lm-evaluation-harness's ``gsm8k`` task."""

from __future__ import annotations

from mathpe.data.gsm8k import HUB_DATASET, load_gsm8k
from mathpe.data.jsonl import split_file
from mathpe.eval.grading import GSM8K_STOP_SEQUENCES, grade_gsm8k
from mathpe.eval.tasks import EvalItem, Task, TaskRequest, register_task


@register_task("gsm8k")
def gsm8k_task(request: TaskRequest) -> Task:
    """The first ``train_samples`` training problems and ``eval_samples`` test problems (None: all)."""
    data_dir = request.data_dir
    train = load_gsm8k("train", data_dir, limit=request.train_samples)
    test = load_gsm8k("test", data_dir, limit=request.eval_samples)
    return Task(
        name=request.name,
        train_pairs=[example.training_pair() for example in train],
        eval_items=[EvalItem(example.prompt(), example.answer, "all") for example in test],
        grade=grade_gsm8k,
        metrics=("strict_match", "flexible_extract"),
        max_new_tokens=256,
        stop=GSM8K_STOP_SEQUENCES,
        train_source=str(split_file("gsm8k", "train", data_dir) or f"hub dataset {HUB_DATASET!r} (train)"),
    )
