"""Seeded arithmetic problems for length generalisation (addition, subtraction, multiplication).

Each example keeps its prompt (``"123+45="``) apart from its answer (``"168"`` plain, ``"861"`` reversed),
so the training loss can be masked to the answer; the EOS token is appended at training time
(``mathpe.data.collate.encode_example``).

Sampling follows the length-generalisation literature (Lee et al. 2023; McLeish et al. 2024): each
operand's digit count is uniform over ``[min_digits, max_digits]``, then the operand is uniform among the
numbers with that many digits (``0``-``9`` for one digit). The digit length of an example is the larger
operand's digit count. Subtraction keeps ``a >= b`` so results are non-negative. A task may give the
second operand a digit range of its own (``second_digits=(1, 1)``: an n-digit number times one digit).

Index hints (Zhou et al. 2024, arXiv 2402.09371): with ``index_hints`` every digit is preceded by a hint
letter naming its significance (``"a3b2c1+a5b4=a8b6c1"`` for 123 + 45 reversed), so digits of equal place
value can be matched by content. The hints of an example are consecutive letters of ``INDEX_HINTS`` from a
start drawn uniformly among those that keep its hints inside the alphabet (every hint up to the alphabet's
end gets trained, so longer test numbers find trained hints). Evaluation problems draw their starts the same
way, from a generator of their own: a fixed first letter would test the hints training sees least (``a``
only starts a number, so only one start in ~45 trains it).

Evaluation sets are built per operand length (both operands exactly that long, or the first that long and
the second drawn from ``second_digits``) and generated before the training set, which excludes every
``(a, op, b)`` they hold: a train split never contains a test problem.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from mathpe.errors import ConfigError

Operation = Literal["add", "sub", "mul"]
AnswerFormat = Literal["plain", "reversed"]
ProblemKey = tuple[int, str, int]

OPERATION_SYMBOLS: dict[str, str] = {"add": "+", "sub": "-", "mul": "*"}
ANSWER_FORMATS: tuple[str, ...] = ("plain", "reversed")
MAX_REJECTIONS = 10_000
#: Hint letters in significance order: ``a`` for the units digit at hint start 0, then ``b``, ... ``Z``.
INDEX_HINTS = string.ascii_lowercase + string.ascii_uppercase


def check_digit_range(label: str, low: int, high: int, bounds: tuple[str, str] = ("min", "max")) -> None:
    """Raise ``ConfigError`` (a ValueError) ``"<label> must satisfy 1 <= min <= max"`` unless ``1 <= low <= high``."""
    if not 1 <= low <= high:
        raise ConfigError(f"{label} must satisfy 1 <= {bounds[0]} <= {bounds[1]}")


@dataclass(frozen=True)
class ArithmeticTask:
    """What to generate: the operation, the operand digit range and the text format.

    ``fmt="reversed"`` writes the answer least significant digit first (Lee et al. 2023);
    ``reverse_operands`` reverses the operands too; ``zero_pad`` pads both operands to the longer one's
    length and the answer to the longest result that length allows (n+1 digits for ``add``, n for ``sub``,
    2n for ``mul``), so digits of equal significance line up; with ``second_digits``, the second operand is
    padded to its range's longest instead and a product to n + that many digits. ``second_digits`` is the
    second operand's digit range when it differs from the first's (None: the same range). ``index_hints``
    puts a hint letter of the digit's significance before every digit (module docstring).
    """

    op: Operation
    min_digits: int = 1
    max_digits: int = 8
    fmt: AnswerFormat = "reversed"
    zero_pad: bool = False
    reverse_operands: bool = False
    second_digits: tuple[int, int] | None = None
    index_hints: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPERATION_SYMBOLS:
            raise ValueError(f"op={self.op!r} is not one of {sorted(OPERATION_SYMBOLS)}")
        if self.fmt not in ANSWER_FORMATS:
            raise ValueError(f"fmt={self.fmt!r} is not one of {list(ANSWER_FORMATS)}")
        check_digit_range(
            f"digit range [{self.min_digits}, {self.max_digits}]",
            self.min_digits,
            self.max_digits,
            bounds=("min_digits", "max_digits"),
        )
        if self.second_digits is not None:
            check_digit_range(f"second_digits={self.second_digits}", *self.second_digits)

    @property
    def symbol(self) -> str:
        return OPERATION_SYMBOLS[self.op]

    def second_lengths(self) -> range:
        """Digit counts the second operand may take in training."""
        low, high = self.second_digits or (self.min_digits, self.max_digits)
        return range(low, high + 1)


@dataclass(frozen=True)
class Example:
    """One problem ``a op b``: ``prompt + answer`` is the full text (EOS excluded)."""

    prompt: str
    answer: str
    operand_digits: int
    a: int
    b: int
    result: int
    op: Operation

    @property
    def key(self) -> ProblemKey:
        """``(a, symbol, b)``, what makes two problems the same."""
        return (self.a, OPERATION_SYMBOLS[self.op], self.b)

    @property
    def text(self) -> str:
        return self.prompt + self.answer


@dataclass(frozen=True)
class ArithmeticSplits:
    """A training set and evaluation sets per operand length, disjoint by ``(a, op, b)``."""

    train: list[Example]
    eval_by_length: dict[int, list[Example]]
    train_digits: tuple[int, int]

    def in_distribution(self) -> dict[int, list[Example]]:
        """Evaluation sets whose length lies in the training digit range."""
        low, high = self.train_digits
        return {length: examples for length, examples in self.eval_by_length.items() if low <= length <= high}

    def out_of_distribution(self) -> dict[int, list[Example]]:
        """Evaluation sets whose length lies outside the training digit range."""
        in_distribution = self.in_distribution()
        return {
            length: examples
            for length, examples in self.eval_by_length.items()
            if length not in in_distribution
        }


def compute(op: Operation, a: int, b: int) -> int:
    """The exact result of ``a op b``."""
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    return a * b


def format_example(task: ArithmeticTask, a: int, b: int, hint_start: int = 0) -> Example:
    """The example for ``a op b`` in the task's text format; with index hints, the units digits' hint is
    ``INDEX_HINTS[hint_start]``."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative integers, got a={a}, b={b}")
    if task.op == "sub" and a < b:
        raise ValueError(f"subtraction needs a >= b to stay non-negative, got a={a}, b={b}")
    if hint_start < 0:
        raise ValueError(f"hint_start must be >= 0, got {hint_start}")
    result = compute(task.op, a, b)
    operand_digits = max(len(str(a)), len(str(b)))
    widths = _padded_widths(task, a, b) if task.zero_pad else (0, 0)
    answer_width = _max_result_digits(task.op, *widths) if task.zero_pad else 0
    hints = hint_start if task.index_hints else None
    left, right = (
        _write_number(n, width, task.reverse_operands, hints) for n, width in zip((a, b), widths, strict=True)
    )
    prompt = f"{left}{task.symbol}{right}="
    answer = _write_number(result, answer_width, task.fmt == "reversed", hints)
    return Example(prompt, answer, operand_digits, a, b, result, task.op)


def problem_keys(examples: Iterable[Example]) -> frozenset[ProblemKey]:
    """The ``(a, symbol, b)`` of each example, for excluding them from another split."""
    return frozenset(example.key for example in examples)


def generate_examples(
    task: ArithmeticTask, n: int, seed: int, exclude: Collection[ProblemKey] = frozenset()
) -> list[Example]:
    """``n`` examples with operand lengths uniform over the task's range, skipping problems in ``exclude``.

    Deterministic for a seed. Raises ``ValueError`` when ``exclude`` leaves no problem to draw.
    """
    _check_count(n)
    rng = random.Random(f"{seed}:{task.op}:train")
    # Hint starts come from a generator of their own: a seed draws the same problems with and without hints.
    hint_rng = random.Random(f"{seed}:{task.op}:hints")
    lengths, second_lengths = range(task.min_digits, task.max_digits + 1), task.second_lengths()
    return [
        _draw_example(
            task, rng, lambda rng: (rng.choice(lengths), rng.choice(second_lengths)), hint_rng, exclude
        )
        for _ in range(n)
    ]


def length_eval_sets(
    task: ArithmeticTask, lengths: Iterable[int] = range(1, 17), n_per_length: int = 100, seed: int = 0
) -> dict[int, list[Example]]:
    """For each length, ``n_per_length`` examples whose two operands both have exactly that many digits.

    With the task's ``second_digits``, only the first operand has that length; the second's is drawn from
    its range.
    """
    _check_count(n_per_length)
    sets = {}
    for length in lengths:
        if length < 1:
            raise ValueError(f"operand length {length} must be >= 1")
        rng = random.Random(f"{seed}:{task.op}:eval:{length}")
        hint_rng = random.Random(f"{seed}:{task.op}:eval:{length}:hints")
        sets[length] = [
            _draw_example(
                task,
                rng,
                lambda rng, length=length: (length, _second_length(task, rng, length)),
                hint_rng,
            )
            for _ in range(n_per_length)
        ]
    return sets


def build_splits(
    task: ArithmeticTask,
    n_train: int,
    seed: int,
    eval_lengths: Sequence[int] = tuple(range(1, 17)),
    n_eval_per_length: int = 100,
) -> ArithmeticSplits:
    """Evaluation sets per length first, then a training set (over the task's digit range) without them."""
    eval_by_length = length_eval_sets(task, eval_lengths, n_eval_per_length, seed)
    held_out = problem_keys(example for examples in eval_by_length.values() for example in examples)
    train = generate_examples(task, n_train, seed, exclude=held_out)
    return ArithmeticSplits(train, eval_by_length, (task.min_digits, task.max_digits))


def _draw_example(
    task: ArithmeticTask,
    rng: random.Random,
    draw_lengths: Callable[[random.Random], tuple[int, int]],
    hint_rng: random.Random,
    exclude: Collection[ProblemKey] = frozenset(),
) -> Example:
    """A problem drawn with ``draw_lengths`` and not in ``exclude``. With the task's index hints, the hint
    start is drawn with ``hint_rng``, uniform over the starts that keep the example's hints within
    ``INDEX_HINTS``."""
    for _ in range(MAX_REJECTIONS):
        a, b = (_uniform_with_digits(rng, length) for length in draw_lengths(rng))
        if task.op == "sub" and a < b:
            a, b = b, a
        if (a, task.symbol, b) not in exclude:
            if not task.index_hints:
                return format_example(task, a, b)
            last_start = len(INDEX_HINTS) - _longest_number(task, a, b)
            return format_example(task, a, b, hint_rng.randrange(max(last_start, 0) + 1))
    raise ConfigError(  # the digit range is too small for the held-out problems: the user's settings
        f"no {task.op} problem with {task.min_digits}-{task.max_digits} digits left after excluding "
        f"{len(exclude)} held-out problems ({MAX_REJECTIONS} draws rejected)"
    )


def _second_length(task: ArithmeticTask, rng: random.Random, first_length: int) -> int:
    """An evaluation problem's second operand length: the first's, or a draw from ``second_digits``."""
    return first_length if task.second_digits is None else rng.choice(task.second_lengths())


def _uniform_with_digits(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randrange(low, 10**digits)


def _padded_widths(task: ArithmeticTask, a: int, b: int) -> tuple[int, int]:
    """The zero-padded operands' digit counts: the longer one's for both, or with ``second_digits`` the
    first's own and the second range's longest."""
    longer = max(len(str(a)), len(str(b)))
    return (longer, longer if task.second_digits is None else task.second_digits[1])


def _max_result_digits(op: Operation, first_digits: int, second_digits: int) -> int:
    """The longest result of operands of ``first_digits`` and ``second_digits`` digits."""
    longer = max(first_digits, second_digits)
    return {"add": longer + 1, "sub": longer, "mul": first_digits + second_digits}[op]


def _longest_number(task: ArithmeticTask, a: int, b: int) -> int:
    """Digits of the longest number ``format_example`` writes for ``a op b`` (operands and answer)."""
    widths = _padded_widths(task, a, b) if task.zero_pad else (len(str(a)), len(str(b)))
    padded_answer = _max_result_digits(task.op, *widths) if task.zero_pad else 0
    return max(*widths, len(str(compute(task.op, a, b))), padded_answer)


def _write_number(number: int, width: int, reverse: bool, hint_start: int | None = None) -> str:
    """``number`` zero-padded to ``width`` digits, reversed or not; with ``hint_start``, each digit after its
    index hint ``INDEX_HINTS[hint_start + significance]``."""
    places = list(str(number).zfill(width))[::-1]  # least significant first
    if hint_start is not None:
        if hint_start + len(places) > len(INDEX_HINTS):
            raise ValueError(
                f"index hints cover {len(INDEX_HINTS)} digits, but {number} from hint {hint_start} needs "
                f"{hint_start + len(places)}; use shorter numbers or no index hints"
            )
        places = [INDEX_HINTS[hint_start + significance] + digit for significance, digit in enumerate(places)]
    return "".join(places if reverse else places[::-1])


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"number of examples {n} must be >= 0")
