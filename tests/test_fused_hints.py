"""Fused index hints: each hint letter and its digit one token (``a3``), the text unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoTokenizer

import mathpe.eval.evaluate
from mathpe.data.arithmetic import ArithmeticTask, format_example, generate_examples
from mathpe.data.tokenizer import (
    DEFAULT_VOCAB,
    FUSED_HINT_TOKENS,
    ArithmeticTokenizer,
    digit_token_ids,
    index_hint_token_ids,
)
from mathpe.errors import ConfigError
from mathpe.eval.evaluate import evaluate_task
from mathpe.eval.tasks import ArithmeticSettings, build_task
from mathpe.pe import PEShape, build_pe
from mathpe.train.config import RunConfig
from mathpe.train.setup import build_tokenizer, resolved_pe_options

FUSED = ArithmeticTokenizer(fuse_hints=True)
PLAIN = ArithmeticTokenizer()
HINTED = ArithmeticTask("add", 1, 8, reverse_operands=True, zero_pad=True, index_hints=True)


def tokens(tokenizer: ArithmeticTokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_each_hint_and_its_digit_are_one_token():
    assert tokens(FUSED, "a3b2c1+a5b4=a8b6c1") == ["a3", "b2", "c1", "+", "a5", "b4", "=", "a8", "b6", "c1"]
    # A letter without a digit after it is no token of the fused vocabulary; a digit alone still is.
    assert tokens(FUSED, "a+7") == ["<unk>", "+", "7"]
    # Without fused tokens in the vocabulary, every character stays a token.
    assert tokens(ArithmeticTokenizer(index_hints=True), "a3b2") == ["a", "3", "b", "2"]


def test_vocabulary_appends_the_pairs_after_the_default_ids():
    vocab = FUSED.get_vocab()
    assert {token: vocab[token] for token in DEFAULT_VOCAB} == DEFAULT_VOCAB
    assert len(vocab) == len(DEFAULT_VOCAB) + 52 * 10
    assert [vocab[token] for token in FUSED_HINT_TOKENS] == list(range(len(DEFAULT_VOCAB), len(vocab)))
    with pytest.raises(ValueError, match="exclude each other"):
        ArithmeticTokenizer(index_hints=True, fuse_hints=True)


def test_examples_round_trip_with_half_the_tokens(tmp_path):
    FUSED.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    for example in generate_examples(HINTED, 50, seed=3):
        ids = FUSED(example.text, add_special_tokens=False)["input_ids"]
        digits = sum(character.isdigit() for character in example.text)
        assert FUSED.unk_token_id not in ids
        assert len(ids) == len(example.text) - digits  # one token per hint-digit pair, one per symbol
        assert FUSED.decode(ids) == example.text
        assert loaded(example.text, add_special_tokens=False)["input_ids"] == ids


def test_the_generation_budget_counts_the_answers_in_the_models_tokens(monkeypatch):
    settings = ArithmeticSettings(
        train_digits=(1, 8), eval_lengths=(4, 32), zero_pad=True, index_hints=True, fuse_hints=True
    )
    task = build_task("addition", seed=0, train_samples=4, eval_samples=3, arithmetic=settings)
    # The longest answer has 33 digits, each after its hint letter: 66 characters, 33 fused tokens.
    assert max(len(item.reference) for item in task.eval_items) == 66 and task.max_new_tokens == 66 + 2
    assert task.generation_budget(FUSED) == 33 + 2
    assert task.generation_budget(ArithmeticTokenizer(index_hints=True)) == 66 + 2
    assert dataclasses.replace(task, answer_margin=None).generation_budget(FUSED) == 66 + 2
    budgets = []

    def fake_generate(model, tokenizer, prompts, *, max_new_tokens, **options):
        budgets.append(max_new_tokens)
        return [""] * len(prompts)

    monkeypatch.setattr(mathpe.eval.evaluate, "generate_completions", fake_generate)
    evaluate_task(None, FUSED, task)
    evaluate_task(None, FUSED, task.on_validation_pairs(5))  # the probe: 1-8 digit answers, hints fused
    assert budgets == [35, max(len(tokens(FUSED, target)) for _, target in task.validation_pairs[:5]) + 2]


def test_fused_tokens_are_digits_and_no_hint_letters_remain():
    fused_ids = FUSED.fused_hint_token_ids
    assert digit_token_ids(FUSED) == sorted([*FUSED.digit_token_ids, *fused_ids])
    assert index_hint_token_ids(FUSED) == []
    assert PLAIN.fused_hint_token_ids == [] and digit_token_ids(PLAIN) == list(PLAIN.digit_token_ids)


@pytest.mark.parametrize("pe_name", ["abacus", "math_rope", "position_coupling", "position_coupling_rope"])
@pytest.mark.parametrize(("a", "b", "hint_start"), [(321, 45, 0), (99999999, 1, 7), (7, 0, 40)])
def test_digit_aware_pes_give_fused_digits_their_unhinted_places(
    pe_name: str, a: int, b: int, hint_start: int
):
    """Token for token, a fused problem's places equal the same problem's places written without hints."""
    shape = PEShape(2, 16, 32, 256)
    fused_pe = build_pe(pe_name, shape, digit_token_ids=digit_token_ids(FUSED)).eval()
    plain_pe = build_pe(pe_name, shape, digit_token_ids=digit_token_ids(PLAIN)).eval()
    hinted = format_example(ArithmeticTask("add", index_hints=True, reverse_operands=True), a, b, hint_start)
    plain = format_example(ArithmeticTask("add", reverse_operands=True), a, b)

    def places(pe: torch.nn.Module, tokenizer: ArithmeticTokenizer, text: str) -> list[int]:
        input_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        embeds = torch.zeros(*input_ids.shape, shape.hidden_size)
        extra, _ = pe.prepare(input_ids=input_ids, inputs_embeds=embeds, attention_mask=None, state=None)
        return extra["digit_runs"][0].tolist()

    fused_places = places(fused_pe, FUSED, hinted.prompt + hinted.answer)
    assert fused_places == places(plain_pe, PLAIN, plain.prompt + plain.answer)
    assert max(fused_places) == len(str(a + b))  # the answer is the longest number


def test_a_run_builds_the_fused_tokenizer_and_passes_fused_digits():
    settings = ArithmeticSettings(index_hints=True, fuse_hints=True)
    config = RunConfig(pe="abacus", model_size="tiny", datasets=("addition",), arithmetic=settings)
    tokenizer = build_tokenizer(config)
    assert tokenizer.get_vocab() == FUSED.get_vocab()
    options = resolved_pe_options(config, tokenizer)
    assert options["digit_token_ids"] == digit_token_ids(FUSED) and "hint_token_ids" not in options


@pytest.mark.parametrize(
    ("settings", "datasets"),
    [
        (ArithmeticSettings(fuse_hints=True), ("addition",)),
        (ArithmeticSettings(index_hints=True, fuse_hints=True), ("addition", "gsm8k")),
    ],
)
def test_fusing_needs_hints_and_the_arithmetic_tokenizer(
    settings: ArithmeticSettings, datasets: tuple[str, ...]
):
    with pytest.raises(ConfigError, match="--fuse_hints needs --index_hints, arithmetic datasets only"):
        RunConfig(pe="rope", model_size="tiny", datasets=datasets, arithmetic=settings)
