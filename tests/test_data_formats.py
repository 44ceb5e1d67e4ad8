"""Arithmetic formats: index hints (Zhou et al. 2024) in the data, the tokenizer, grading and the CLI."""

from __future__ import annotations

import re

import pytest

from mathpe.cli.main import build_parser, run_config_from
from mathpe.data.arithmetic import (
    INDEX_HINTS,
    ArithmeticTask,
    format_example,
    generate_examples,
    length_eval_sets,
)
from mathpe.data.tokenizer import DEFAULT_VOCAB, ArithmeticTokenizer
from mathpe.eval.grading import extract_arithmetic_answer, grade_arithmetic
from mathpe.eval.tasks import ArithmeticSettings, build_task

REVERSED = ArithmeticTask("add", 1, 8, reverse_operands=True, index_hints=True)
PAIR = re.compile(r"([A-Za-z])(\d)")


def hint_starts(text: str) -> list[int]:
    """For each number of ``text``, the hint index of its first written digit, checking the hints count up."""
    starts = []
    for number in re.findall(r"(?:[A-Za-z]\d)+", text):
        indices = [INDEX_HINTS.index(hint) for hint, _ in PAIR.findall(number)]
        assert indices == list(range(indices[0], indices[0] + len(indices))), number
        starts.append(indices[0])
    return starts


def test_each_digit_follows_the_hint_of_its_significance():
    example = format_example(REVERSED, 123, 45)
    assert (example.prompt, example.answer) == ("a3b2c1+a5b4=", "a8b6c1")
    plain = format_example(ArithmeticTask("add", fmt="plain", index_hints=True), 123, 45)
    assert (plain.prompt, plain.answer) == ("c1b2a3+b4a5=", "c1b6a8")
    padded = format_example(ArithmeticTask("add", fmt="plain", zero_pad=True, index_hints=True), 95, 7)
    assert (padded.prompt, padded.answer) == ("b9a5+b0a7=", "c1b0a2")
    shifted = format_example(REVERSED, 95, 7, hint_start=3)
    assert (shifted.prompt, shifted.answer) == ("d5e9+d7=", "d2e0f1")


def test_hints_start_anywhere_in_training_and_evaluation():
    train = generate_examples(
        ArithmeticTask("add", 1, 3, reverse_operands=True, index_hints=True), 3000, seed=0
    )
    starts = {start for example in train for start in hint_starts(example.text)}
    assert starts == set(range(len(INDEX_HINTS)))  # a one-digit problem may start at the last letter
    used = {hint for example in train for hint, _ in PAIR.findall(example.text)}
    assert used == set(INDEX_HINTS)
    for example in train[:200]:
        assert len(set(hint_starts(example.text))) == 1  # operands and answer share the start
    sets = length_eval_sets(REVERSED, [1, 5, 20], n_per_length=200)
    for length, examples in sets.items():
        last_start = len(INDEX_HINTS) - length  # a later start leaves no hint for the last digit
        starts = [start for example in examples for start in set(hint_starts(example.text))]
        assert len(starts) == len(examples)  # operands and answer share the start
        assert min(starts) <= 3 and last_start - 4 <= max(starts) <= last_start
    # The same problems as without hints, and the same hints for the same seed.
    plain = length_eval_sets(ArithmeticTask("add", 1, 8, reverse_operands=True), [5], n_per_length=200)
    assert [example.key for example in plain[5]] == [example.key for example in sets[5]]
    assert [e.text for e in length_eval_sets(REVERSED, [5], 200)[5]] == [e.text for e in sets[5]]


def test_hints_change_the_text_not_the_problems():
    """A seed draws the same problems with and without hints (hint starts have their own generator)."""
    plain = generate_examples(ArithmeticTask("add", 1, 8, reverse_operands=True), 300, seed=4)
    hinted = generate_examples(REVERSED, 300, seed=4)
    assert [example.key for example in plain] == [example.key for example in hinted]
    assert [PAIR.sub(r"\2", example.text) for example in hinted] == [example.text for example in plain]


def test_a_number_past_the_hint_alphabet_is_a_clear_error():
    with pytest.raises(ValueError, match=r"index hints cover 52 digits, but .* needs 53"):
        format_example(REVERSED, 10**52, 1)
    with pytest.raises(ValueError, match=r"hint_start must be >= 0, got -1"):
        format_example(REVERSED, 1, 1, hint_start=-1)


def test_tokenizer_adds_hint_tokens_after_the_default_ones_and_round_trips(tmp_path):
    tokenizer = ArithmeticTokenizer(index_hints=True)
    vocab = tokenizer.get_vocab()
    assert {token: vocab[token] for token in DEFAULT_VOCAB} == DEFAULT_VOCAB
    assert len(vocab) == len(DEFAULT_VOCAB) + len(INDEX_HINTS)
    text = format_example(REVERSED, 95, 7, hint_start=40).text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    assert ArithmeticTokenizer.from_pretrained(tmp_path).get_vocab() == vocab
    assert ArithmeticTokenizer().get_vocab() == DEFAULT_VOCAB  # without hints: unchanged


def test_grading_reads_the_digits_and_drops_the_hints():
    assert extract_arithmetic_answer("a8b6c1", "reversed", index_hints=True) == 168
    assert extract_arithmetic_answer("c1b6a8=junk", "plain", index_hints=True) == 168
    assert extract_arithmetic_answer("a8b6c1", "reversed") is None  # hints are not digits otherwise
    assert extract_arithmetic_answer("<eos>", "reversed", index_hints=True) is None
    assert grade_arithmetic("a8b6c1", "a8b6c1", "reversed", index_hints=True)
    assert grade_arithmetic("a8z6c1", "a8b6c1", "reversed", index_hints=True)  # hints are not graded
    assert not grade_arithmetic("a8b6", "a8b6c1", "reversed", index_hints=True)
    assert not grade_arithmetic("a8b6c2", "a8b6c1", "reversed", index_hints=True)


def test_task_and_cli_carry_the_format():
    task = build_task(
        "addition",
        seed=0,
        train_samples=50,
        eval_samples=5,
        arithmetic=ArithmeticSettings(train_digits=(1, 4), eval_lengths=(2, 6), index_hints=True),
    )
    assert all(PAIR.match(answer) for _, answer in task.train_pairs)
    assert all(PAIR.match(item.prompt) and PAIR.match(item.reference) for item in task.eval_items)
    item = task.eval_items[0]
    assert task.grade(item.reference, item.reference)["exact_match"]
    assert task.max_new_tokens >= max(len(item.reference) for item in task.eval_items)
    parser = build_parser()
    args = parser.parse_args(["train", "--index_hints", "--datasets", "addition"])
    assert run_config_from(args, "rope").arithmetic.index_hints
    args = parser.parse_args(["train", "--datasets", "addition"])
    assert not run_config_from(args, "rope").arithmetic.index_hints
    args = parser.parse_args(["train", "--index_hints", "--fuse_hints", "--datasets", "addition"])
    assert run_config_from(args, "rope").arithmetic.fuse_hints


def test_zero_pad_flag_pads_operands_and_answers() -> None:
    args = build_parser().parse_args(
        ["train", "--zero_pad", "--datasets", "addition", "--train_digits", "1-3"]
    )
    settings = run_config_from(args, "rope").arithmetic
    assert settings.zero_pad
    task = build_task("addition", seed=0, train_samples=50, eval_samples=3, arithmetic=settings)
    for prompt, answer in task.train_pairs:
        first, second = prompt.removesuffix("=").split("+")
        assert len(first) == len(second) and len(answer) == len(first) + 1  # padded operands, widest sum
    operands = [operand for prompt, _ in task.train_pairs for operand in prompt.removesuffix("=").split("+")]
    assert any(
        len(operand) > 1 and operand.endswith("0") for operand in operands
    )  # a padded most significant 0
    args = build_parser().parse_args(["train", "--datasets", "addition"])
    assert not run_config_from(args, "rope").arithmetic.zero_pad
