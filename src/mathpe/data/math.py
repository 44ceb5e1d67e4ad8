"""MATH (Hendrycks et al. 2021): loading and the prompt formats of lm-evaluation-harness.

Two formats, following the harness's task definitions:

- ``hendrycks`` (``lm_eval/tasks/hendrycks_math``): prompt ``"Problem: {problem}\\nAnswer:"``, target
  ``" " + answer`` where the answer is the content of the solution's last ``\\boxed{}``; zero-shot.
- ``minerva`` (``lm_eval/tasks/minerva_math``, Lewkowycz et al. 2022): prompt
  ``"Problem:\\n{problem}\\n\\nSolution:"``, target ``" " + solution``; 4-shot with
  ``MINERVA_FEWSHOT_EXAMPLES``, each shot ``prompt + target``, joined with ``"\\n\\n"``.

Generation stops at ``mathpe.eval.grading.MATH_STOP_SEQUENCES``.

Local layout: ``{data_dir}/math/{train,test,test500}.jsonl`` with string fields ``problem``, ``level``,
``type`` and ``solution`` (``unique_id`` optional). Without a data directory (argument or
``$MATHPE_DATA``) the hub is read through ``datasets``: ``EleutherAI/hendrycks_math`` (one config per
subject, concatenated in ``HUB_SUBJECTS`` order) and, for ``test500``, ``HuggingFaceH4/MATH-500``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mathpe.data.jsonl import load_hub_rows, read_jsonl, split_file
from mathpe.eval.grading import extract_boxed_answer

PromptStyle = Literal["hendrycks", "minerva"]
PROMPT_STYLES: tuple[str, ...] = ("hendrycks", "minerva")
SPLITS = ("train", "test", "test500")
FIELDS = ("problem", "level", "type", "solution")
HUB_DATASET = "EleutherAI/hendrycks_math"
HUB_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
HUB_MATH500 = "HuggingFaceH4/MATH-500"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class MATHExample:
    """One problem; ``solution`` ends in a ``\\boxed{}`` answer."""

    problem: str
    solution: str
    level: str
    type: str
    unique_id: str = ""

    @property
    def answer(self) -> str | None:
        """The content of the solution's last box (``None`` if it has none)."""
        return extract_boxed_answer(self.solution)

    def prompt(self, style: PromptStyle = "minerva", shots: Sequence[MATHExample] = ()) -> str:
        """The harness's prompt in ``style``, preceded by the solved ``shots`` when given."""
        solved = [shot.prompt(style) + shot.target(style) for shot in shots]
        return FEWSHOT_DELIMITER.join([*solved, _question(self.problem, style)])

    def target(self, style: PromptStyle = "minerva") -> str:
        """What follows the prompt: a space and the boxed answer (hendrycks) or the solution (minerva)."""
        if style == "minerva":
            return TARGET_DELIMITER + self.solution
        if self.answer is None:
            raise ValueError(
                f"MATH problem {self.unique_id or self.problem[:40]!r} has no \\boxed{{}} answer"
            )
        return TARGET_DELIMITER + self.answer

    def training_pair(self, style: PromptStyle = "minerva") -> tuple[str, str]:
        """``(prompt, target)`` for ``mathpe.data.collate.encode_example`` (loss on the target only)."""
        return self.prompt(style), self.target(style)


def _question(problem: str, style: PromptStyle) -> str:
    if style == "hendrycks":
        return f"Problem: {problem}\nAnswer:"
    if style == "minerva":
        return f"Problem:\n{problem}\n\nSolution:"
    raise ValueError(f"prompt style {style!r} is not one of {list(PROMPT_STYLES)}")


def read_math_file(path: str | Path) -> list[MATHExample]:
    """Every example of one MATH JSON Lines file."""
    return [_example(record) for record in read_jsonl(path, FIELDS)]


def load_math(split: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[MATHExample]:
    """The ``split`` (``train``, ``test`` or ``test500``) from ``data_dir`` or ``$MATHPE_DATA``, else from
    the hub; the first ``limit`` examples when given."""
    if split not in SPLITS:
        raise ValueError(f"MATH split {split!r} is not one of {list(SPLITS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit} must be >= 0 or None")
    path = split_file("math", split, data_dir)
    if path is not None:
        return read_math_file(path)[:limit]
    if split == "test500":
        rows = load_hub_rows(HUB_MATH500, None, "test")
    else:
        rows = [row for subject in HUB_SUBJECTS for row in load_hub_rows(HUB_DATASET, subject, split)]
    return [_example(row) for row in rows][:limit]


def _example(record: Mapping[str, object]) -> MATHExample:
    level = record["level"]
    return MATHExample(
        problem=str(record["problem"]),
        solution=str(record["solution"]),
        level=f"Level {level}" if isinstance(level, int) else str(level),
        type=str(record.get("type", record.get("subject", ""))),
        unique_id=str(record.get("unique_id", "")),
    )


# The four solved problems of the Minerva prompt (Lewkowycz et al. 2022, appendix D), as
# lm_eval/tasks/minerva_math/utils.py ``list_fewshot_samples`` lists them (the first problem's stray "}"
# included). Line breaks inside align* are written ``\\`` as in the paper and the harness's earlier raw-string
# prompt; the harness's current list lost one backslash of each.
MINERVA_FEWSHOT_EXAMPLES: tuple[MATHExample, ...] = (
    MATHExample(
        problem=r"Find the domain of the expression  $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.}",
        solution=(
            r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so"
            r" $x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so"
            r" $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$."
            "\nFinal Answer: The final answer is $[2,5)$. I hope it is correct."
        ),
        level="",
        type="",
    ),
    MATHExample(
        problem=r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
        solution=(
            r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B})"
            r" = (2)(12) = \boxed{24}.$"
            "\nFinal Answer: The final answer is $24$. I hope it is correct."
        ),
        level="",
        type="",
    ),
    MATHExample(
        problem=(
            "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead,"
            " how many times must Terrell lift them in order to lift the same total weight?"
        ),
        solution=(
            r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\cdot 12\cdot20=480$"
            r" pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a"
            r" total of $2\cdot15\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve"
            " for $n$:\n"
            "\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}"
            "\nFinal Answer: The final answer is $16$. I hope it is correct."
        ),
        level="",
        type="",
    ),
    MATHExample(
        problem=(
            "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}"
            "has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$"
            " is nonzero."
        ),
        solution=(
            "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$"
            "Since we also know that $6y-9x=b$, we have\n\n"
            "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$"
            "\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."
        ),
        level="",
        type="",
    ),
)
