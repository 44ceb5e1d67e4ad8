"""GSM8K (Cobbe et al. 2021): loading and the prompt formats of lm-evaluation-harness.

Formats follow the harness's ``lm_eval/tasks/gsm8k/gsm8k.yaml``: the prompt is
``"Question: {question}\\nAnswer:"``, the target is ``" " + answer`` (``target_delimiter`` is a space) and
few-shot prompts join solved examples from the train split with ``"\\n\\n"`` (``fewshot_delimiter``) in
front of the question. The harness draws its shots at random; here the caller passes them (for instance
the first k of the train split). Generation stops at ``mathpe.eval.grading.GSM8K_STOP_SEQUENCES``.

Local layout: ``{data_dir}/gsm8k/{train,test}.jsonl`` with string fields ``question`` and ``answer``.
Without a data directory (argument or ``$MATHPE_DATA``) the hub dataset ``openai/gsm8k`` (config
``main``) is read through ``datasets``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mathpe.data.jsonl import load_hub_rows, read_jsonl, split_file

SPLITS = ("train", "test")
HUB_DATASET = "openai/gsm8k"
HUB_CONFIG = "main"
FIELDS = ("question", "answer")
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class GSM8KExample:
    """One problem: ``answer`` is the worked solution ending in ``#### <number>``."""

    question: str
    answer: str

    @property
    def final_answer(self) -> str:
        """The number after ``####``."""
        return self.answer.split("####")[-1].strip()

    def prompt(self, shots: Sequence[GSM8KExample] = (), strip_calculator: bool = False) -> str:
        """The harness's zero-shot prompt, preceded by the solved ``shots`` when given."""
        question = f"Question: {self.question}\nAnswer:"
        solved = [shot.prompt() + shot.target(strip_calculator) for shot in shots]
        return FEWSHOT_DELIMITER.join([*solved, question])

    def target(self, strip_calculator: bool = False) -> str:
        """What follows the prompt: a space and the solution, calculator annotations optionally removed."""
        answer = strip_calculator_annotations(self.answer) if strip_calculator else self.answer
        return TARGET_DELIMITER + answer

    def training_pair(self, strip_calculator: bool = True) -> tuple[str, str]:
        """``(prompt, target)`` for ``mathpe.data.collate.encode_example`` (loss on the target only)."""
        return self.prompt(), self.target(strip_calculator)


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<48/2=24>>`` calculator annotations."""
    return CALCULATOR_ANNOTATION.sub("", text)


def read_gsm8k_file(path: str | Path) -> list[GSM8KExample]:
    """Every example of one GSM8K JSON Lines file."""
    return [_example(record) for record in read_jsonl(path, FIELDS)]


def load_gsm8k(
    split: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[GSM8KExample]:
    """The ``split`` (``train`` or ``test``) from ``data_dir`` or ``$MATHPE_DATA``, else from the hub;
    the first ``limit`` examples when given."""
    if split not in SPLITS:
        raise ValueError(f"GSM8K split {split!r} is not one of {list(SPLITS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit} must be >= 0 or None")
    path = split_file("gsm8k", split, data_dir)
    if path is None:
        examples = [_example(row) for row in load_hub_rows(HUB_DATASET, HUB_CONFIG, split)]
    else:
        examples = read_gsm8k_file(path)
    return examples[:limit]


def _example(record: Mapping[str, object]) -> GSM8KExample:
    return GSM8KExample(question=str(record["question"]), answer=str(record["answer"]))
