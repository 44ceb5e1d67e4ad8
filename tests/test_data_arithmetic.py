"""Seeded arithmetic problems: formats, digit ranges, determinism and train/test separation."""

from __future__ import annotations

import pytest

from mathpe.data.arithmetic import (
    ArithmeticTask,
    build_splits,
    compute,
    format_example,
    generate_examples,
    length_eval_sets,
    problem_keys,
)
from mathpe.eval.grading import decode_answer, grade_arithmetic


def test_plain_and_reversed_formats_keep_prompt_and_answer_apart() -> None:
    plain = format_example(ArithmeticTask("add", fmt="plain"), 123, 45)
    reversed_ = format_example(ArithmeticTask("add", fmt="reversed"), 123, 45)
    assert (plain.prompt, plain.answer) == ("123+45=", "168")
    assert (reversed_.prompt, reversed_.answer) == ("123+45=", "861")
    assert reversed_.text == "123+45=861"
    assert (reversed_.a, reversed_.b, reversed_.result, reversed_.operand_digits) == (123, 45, 168, 3)


def test_reversed_operands_and_zero_padding() -> None:
    task = ArithmeticTask("add", fmt="reversed", reverse_operands=True, zero_pad=True)
    example = format_example(task, 123, 45)
    assert example.prompt == "321+540="  # 045 reversed
    assert example.answer == "8610"  # 0168 reversed: add results have up to n+1 digits
    assert format_example(ArithmeticTask("mul", fmt="plain", zero_pad=True), 12, 3).answer == "0036"
    assert format_example(ArithmeticTask("sub", fmt="plain", zero_pad=True), 12, 3).answer == "09"
    # n-digit x 1-digit: the multiplier stays one digit, the product n + 1 digits (not 2n).
    by_digit = ArithmeticTask("mul", fmt="plain", zero_pad=True, second_digits=(1, 1))
    assert format_example(by_digit, 123, 3).text == "123*3=0369"
    by_two = ArithmeticTask("mul", fmt="plain", zero_pad=True, second_digits=(1, 2))
    assert format_example(by_two, 123, 3).text == "123*03=00369"
    assert format_example(by_two, 5, 42).text == "05*42=0210"


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("fmt", ["plain", "reversed"])
def test_every_answer_is_the_exact_result(op: str, fmt: str) -> None:
    task = ArithmeticTask(op, min_digits=1, max_digits=12, fmt=fmt)
    for example in generate_examples(task, 300, seed=3):
        assert example.result == compute(op, example.a, example.b)
        assert example.result >= 0
        assert decode_answer(example.answer, fmt) == example.result
        assert example.prompt == f"{example.a}{task.symbol}{example.b}="
        assert grade_arithmetic(example.answer + "<eos>", example.answer, fmt)


def test_generation_is_deterministic_for_a_seed() -> None:
    task = ArithmeticTask("mul", 1, 8)
    assert generate_examples(task, 50, seed=7) == generate_examples(task, 50, seed=7)
    assert generate_examples(task, 50, seed=7) != generate_examples(task, 50, seed=8)


def test_operand_lengths_are_uniform_over_the_range() -> None:
    task = ArithmeticTask("add", min_digits=3, max_digits=6)
    examples = generate_examples(task, 2000, seed=0)
    lengths = [len(str(n)) for example in examples for n in (example.a, example.b)]
    assert set(lengths) == {3, 4, 5, 6}
    assert all(abs(lengths.count(length) / len(lengths) - 0.25) < 0.03 for length in range(3, 7))
    assert all(
        example.operand_digits == max(len(str(example.a)), len(str(example.b))) for example in examples
    )


def test_length_eval_sets_hold_operands_of_exactly_that_length() -> None:
    sets = length_eval_sets(ArithmeticTask("sub", 1, 8), lengths=[1, 9, 16], n_per_length=20, seed=0)
    assert sorted(sets) == [1, 9, 16]
    for length, examples in sets.items():
        assert len(examples) == 20
        assert all(len(str(e.a)) == len(str(e.b)) == e.operand_digits == length for e in examples)
        assert all(e.a >= e.b for e in examples)


def test_second_operand_can_have_its_own_digit_range() -> None:
    # n-digit x 1-digit multiplication: the first operand sets the example's length, the second stays short.
    task = ArithmeticTask("mul", 1, 8, second_digits=(1, 1), reverse_operands=True)
    train = generate_examples(task, 2000, seed=0)
    assert {len(str(e.b)) for e in train} == {1}
    assert {len(str(e.a)) for e in train} == set(range(1, 9))
    assert all(e.operand_digits == len(str(e.a)) for e in train)
    sets = length_eval_sets(task, lengths=[1, 12, 20], n_per_length=30, seed=0)
    for length, examples in sets.items():
        assert all(len(str(e.a)) == e.operand_digits == length and e.b < 10 for e in examples)
        assert all(decode_answer(e.answer, "reversed") == e.a * e.b for e in examples)
    assert len({e.b for e in sets[20]}) > 3  # the second operand is drawn, not fixed


def test_train_split_never_contains_an_eval_problem() -> None:
    # One- and two-digit addition has only 10,000 problems, so collisions would be certain without exclusion.
    task = ArithmeticTask("add", min_digits=1, max_digits=2)
    splits = build_splits(task, n_train=5000, seed=0, eval_lengths=[1, 2, 3], n_eval_per_length=50)
    eval_keys = problem_keys(e for examples in splits.eval_by_length.values() for e in examples)
    assert len(splits.train) == 5000
    assert problem_keys(splits.train).isdisjoint(eval_keys)
    assert sorted(splits.in_distribution()) == [1, 2]
    assert sorted(splits.out_of_distribution()) == [3]
    assert build_splits(task, n_train=100, seed=0, eval_lengths=[1], n_eval_per_length=5).train == (
        build_splits(task, n_train=100, seed=0, eval_lengths=[1], n_eval_per_length=5).train
    )


def test_exhausted_problem_space_is_a_clear_error() -> None:
    task = ArithmeticTask("add", min_digits=1, max_digits=1)
    every_problem = {(a, "+", b) for a in range(10) for b in range(10)}
    with pytest.raises(ValueError, match="no add problem with 1-1 digits left"):
        generate_examples(task, 1, seed=0, exclude=every_problem)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"op": "div"}, "op='div' is not one of"),
        ({"op": "add", "fmt": "backwards"}, "fmt='backwards' is not one of"),
        ({"op": "add", "min_digits": 0}, "must satisfy 1 <= min_digits <= max_digits"),
        ({"op": "add", "min_digits": 5, "max_digits": 4}, "must satisfy 1 <= min_digits <= max_digits"),
        ({"op": "mul", "second_digits": (0, 1)}, r"second_digits=\(0, 1\) must satisfy"),
    ],
)
def test_invalid_tasks_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(**kwargs)


def test_negative_operands_and_results_are_refused() -> None:
    with pytest.raises(ValueError, match="a >= b"):
        format_example(ArithmeticTask("sub"), 3, 5)
    with pytest.raises(ValueError, match="non-negative"):
        format_example(ArithmeticTask("add"), -3, 5)
