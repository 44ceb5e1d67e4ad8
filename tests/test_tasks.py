"""The task registry: a task registered anywhere is usable by name, like a built-in one."""

from __future__ import annotations

import pytest

import mathpe.eval.tasks as tasks
from mathpe.errors import ConfigError
from mathpe.eval.tasks import (
    ArithmeticSettings,
    EvalItem,
    Task,
    TaskRequest,
    build_task,
    list_tasks,
    register_task,
)
from mathpe.train.config import RunConfig
from mathpe.train.run import build_tasks


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test are undone after it."""
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._registry()))


def register_echo() -> list[TaskRequest]:
    """Register the task ``echo`` (repeat the prompt); returns the list its builder records its calls in."""
    calls: list[TaskRequest] = []

    @register_task("echo")
    def echo_task(request: TaskRequest) -> Task:
        calls.append(request)
        return Task(
            name=request.name,
            train_pairs=[(f"{i}=", str(i)) for i in range(request.train_samples)],
            eval_items=[EvalItem(f"{i}=", str(i), "all") for i in range(request.eval_samples or 3)],
            grade=lambda completion, reference: {"exact_match": completion.strip() == reference},
            metrics=("exact_match",),
            max_new_tokens=4,
        )

    return calls


def test_the_built_in_families_are_registered():
    assert list_tasks() == ["addition", "subtraction", "multiplication", "gsm8k", "math"]
    assert tuple(list_tasks()) == tasks.DATASETS


def test_a_task_registered_in_a_test_file_is_usable_by_name(registry, tmp_path):
    calls = register_echo()
    assert "echo" in list_tasks() and "echo" in tasks.DATASETS
    task = build_task("echo", seed=7, train_samples=5, eval_samples=2, data_dir=tmp_path)
    assert (task.name, len(task.train_pairs), len(task.eval_items)) == ("echo", 5, 2)
    assert calls == [TaskRequest("echo", 7, 5, 2, tmp_path, ArithmeticSettings())]
    # The run settings accept it and the pipeline builds it, beside a built-in task.
    config = RunConfig(datasets=("echo", "addition"), train_samples=4, eval_samples=1, seed=3)
    config.validate()
    built = build_tasks(config)
    assert [task.name for task in built] == ["echo", "addition"]
    assert calls[-1] == TaskRequest("echo", 3, 4, 1, None, config.arithmetic)
    assert built[0].grade("4", "4") == {"exact_match": True}


def test_a_name_registers_once(registry):
    register_echo()
    with pytest.raises(ValueError, match=r"task\(s\) \['echo'\] are already registered"):
        register_echo()


def test_an_unknown_task_is_one_line_naming_the_registered_ones(registry):
    register_echo()
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'poetry'; choose from: addition, .*, math, echo$"
    ):
        build_task("poetry", seed=0, train_samples=1, eval_samples=1)
    with pytest.raises(ConfigError, match=r"unknown dataset\(s\) \['poetry'\]"):
        RunConfig(datasets=("poetry",)).validate()
