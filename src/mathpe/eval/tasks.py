"""Tasks as data, in a registry: what to train on, what to evaluate, how to grade, for each ``--datasets`` name.

Like lm-evaluation-harness's task YAMLs, a ``Task`` holds its training pairs, its evaluation items (each in
a group: the operand length for arithmetic, the subject for MATH), its grader and generation settings in
one declarative place; the pipeline treats every task the same way. Each family of tasks is one module of
``mathpe.eval.task_families`` whose builder ``register_task`` adds under its names, as PEs are registered
in ``mathpe.pe``: adding a dataset is adding a module there (or registering a builder anywhere before use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mathpe.cli.arguments import digit_range, int_list
from mathpe.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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
        max_new_tokens: generation budget per prompt (with ``answer_margin``: its upper bound).
        stop: strings that end a completion (besides EOS).
        train_groups: groups seen in training (in-distribution), for arithmetic length splits.
        validation_pairs: held-out pairs from the training distribution, for choosing the best checkpoint.
        train_levels: each training pair's difficulty for a length curriculum (arithmetic: its operand
            digits); empty for tasks without one.
        train_source: where the training pairs come from (a file, a hub dataset), for error messages.
        answer_margin: for tasks whose answers are their references (arithmetic): the budget is the longest
            reference in the model's tokens plus this many (``generation_budget``); None: ``max_new_tokens``.
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
    answer_margin: int | None = None

    def generation_budget(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """``max_new_tokens`` for the evaluation items as ``tokenizer`` writes them.

        With ``answer_margin``, the longest reference's token count plus the margin, at most ``max_new_tokens``:
        a tokenizer that writes several characters as one token (fused index hints) gets a budget in its own
        tokens, so a model that does not stop writes no longer a number than any answer plus the margin.
        """
        if self.answer_margin is None or not self.eval_items:
            return self.max_new_tokens
        references = tokenizer([item.reference for item in self.eval_items], add_special_tokens=False)
        longest = max(len(ids) for ids in references["input_ids"])
        return min(self.max_new_tokens, longest + self.answer_margin)

    def on_validation_pairs(self, limit: int) -> Task:
        """This task with its first ``limit`` validation pairs as its evaluation items, graded against their
        targets (an arithmetic target is its reference) in one group, ``"validation"``; no length split."""
        items = [EvalItem(prompt, target, "validation") for prompt, target in self.validation_pairs[:limit]]
        return dataclasses.replace(self, eval_items=items, train_groups=frozenset())


@dataclass(frozen=True)
class ArithmeticSettings:
    """The synthetic-arithmetic recipe: training digit range, evaluation lengths and text format.

    ``fmt="reversed"`` writes every number least significant digit first, operands included (McLeish et al.
    2024), so digits of equal place value sit at equal offsets in their numbers; ``reverse_operands=False``
    reverses the answer only (Lee et al. 2023). ``second_digits`` gives the second operand a digit range of
    its own (``(1, 1)``: n-digit times one digit); the operand length of an evaluation set is then the
    first operand's. ``zero_pad`` pads operands to equal length and the answer to its longest; ``index_hints``
    puts a hint letter of its significance before every digit (Zhou et al. 2024; ``mathpe.data.arithmetic``),
    graded on the digits alone; ``fuse_hints`` makes each hint and its digit one token of the arithmetic
    tokenizer (``mathpe.data.tokenizer``), the text unchanged.
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
    fuse_hints: bool = field(
        default=False,
        metadata={
            "help": "arithmetic, with --index_hints: each hint letter and its digit one token (a3), so digits "
            "of equal place match by content, without positions"
        },
    )


@dataclass(frozen=True)
class TaskRequest:
    """What a run asks of a task builder: the ``--datasets`` name and the run's data settings.

    ``eval_samples`` caps the evaluation items (per length for arithmetic, in total otherwise; None: all);
    ``data_dir`` holds local JSON Lines files (None: ``$MATHPE_DATA``, then the hub).
    """

    name: str
    seed: int
    train_samples: int
    eval_samples: int | None
    data_dir: str | Path | None = None
    arithmetic: ArithmeticSettings = field(default_factory=ArithmeticSettings)


#: A task family's builder: the request -> the task.
TaskBuilder = Callable[[TaskRequest], Task]
_REGISTRY: dict[str, TaskBuilder] = {}
Builder = TypeVar("Builder", bound=TaskBuilder)


def register_task(*names: str) -> Callable[[Builder], Builder]:
    """Decorator adding a ``TaskBuilder`` to the registry under each of ``names`` (its ``--datasets`` names)."""

    def decorator(builder: Builder) -> Builder:
        taken = [name for name in names if name in _REGISTRY]
        if taken:
            raise ValueError(f"task(s) {taken} are already registered")
        _REGISTRY.update(dict.fromkeys(names, builder))
        return builder

    return decorator


def split_task(
    request: TaskRequest,
    load: Callable[[str, str | Path | None, int | None], list[Any]],
    test_split: str,
    eval_item: Callable[[Any], EvalItem],
    **spec: Any,
) -> Task:
    """A task over a dataset of worked examples loaded by split, ``load(split, data_dir, limit)``: the first
    ``train_samples`` of ``train`` as their ``training_pair()``, the first ``eval_samples`` of ``test_split``
    as ``eval_item(example)``; ``spec``: the rest of the ``Task`` (grader, metrics, generation settings)."""
    return Task(
        name=request.name,
        train_pairs=[
            example.training_pair() for example in load("train", request.data_dir, request.train_samples)
        ],
        eval_items=[
            eval_item(example) for example in load(test_split, request.data_dir, request.eval_samples)
        ],
        **spec,
    )


def _registry() -> dict[str, TaskBuilder]:
    from mathpe.eval import task_families  # noqa: F401  (registers the built-in tasks on first use)

    return _REGISTRY


def list_tasks() -> list[str]:
    """Every registered task name, in registration order (the built-in families first)."""
    return list(_registry())


def build_task(
    name: str,
    *,
    seed: int,
    train_samples: int,
    eval_samples: int | None,
    data_dir: str | Path | None = None,
    arithmetic: ArithmeticSettings | None = None,
) -> Task:
    """Build the registered task ``name`` (one of ``list_tasks()``); the arguments are ``TaskRequest``'s."""
    builder = _registry().get(name)
    if builder is None:
        raise ConfigError(f"unknown dataset {name!r}; choose from: {', '.join(list_tasks())}")
    arithmetic = arithmetic or ArithmeticSettings()
    return builder(TaskRequest(name, seed, train_samples, eval_samples, data_dir, arithmetic))


def __getattr__(name: str) -> Any:
    """``DATASETS``: the registered task names when read (``list_tasks()`` as a tuple)."""
    if name == "DATASETS":
        return tuple(list_tasks())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
