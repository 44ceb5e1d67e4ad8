"""Tasks as data, batched evaluation by generation, and the per-group summaries."""

from __future__ import annotations

import shutil

import pytest
import torch

import mathpe.eval.evaluate
from mathpe.data import FIXTURES_DIR, ArithmeticTokenizer
from mathpe.data.tokenizer import digit_token_ids
from mathpe.eval.evaluate import evaluate_task, generate_completions, offset_vote_completions, summarise
from mathpe.eval.tasks import ArithmeticSettings, build_task
from mathpe.model import MathPEForCausalLM, preset_config


def test_arithmetic_task_groups_by_length_and_keeps_train_and_eval_apart():
    task = build_task(
        "addition",
        seed=3,
        train_samples=500,
        eval_samples=20,
        arithmetic=ArithmeticSettings(train_digits=(1, 3), eval_lengths=(1, 2, 3, 4, 5)),
    )
    assert [item.group for item in task.eval_items].count(5) == 20
    assert task.train_groups == frozenset({1, 2, 3})
    assert not {prompt for prompt, _ in task.train_pairs} & {item.prompt for item in task.eval_items}
    item = task.eval_items[0]
    assert task.grade(item.reference, item.reference)["exact_match"]
    assert not task.grade("9" + item.reference, item.reference)["exact_match"]


def test_text_tasks_load_from_a_data_dir(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "math").mkdir()
    for split in ("train", "test"):
        shutil.copy(FIXTURES_DIR / "gsm8k.jsonl", tmp_path / "gsm8k" / f"{split}.jsonl")
    for split in ("train", "test500"):
        shutil.copy(FIXTURES_DIR / "math.jsonl", tmp_path / "math" / f"{split}.jsonl")
    gsm8k = build_task("gsm8k", seed=0, train_samples=4, eval_samples=3, data_dir=tmp_path)
    assert len(gsm8k.train_pairs) == 4 and len(gsm8k.eval_items) == 3
    assert gsm8k.eval_items[0].prompt.startswith("Question: ") and gsm8k.eval_items[0].prompt.endswith(
        "\nAnswer:"
    )
    assert gsm8k.grade(gsm8k.eval_items[0].reference, gsm8k.eval_items[0].reference)["strict_match"]
    math = build_task("math", seed=0, train_samples=2, eval_samples=2, data_dir=tmp_path)
    assert math.metrics == ("math_verify", "is_equiv") and len(math.eval_items) == 2


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown dataset 'poetry'; choose from: addition, subtraction"):
        build_task("poetry", seed=0, train_samples=1, eval_samples=1)


def test_summary_splits_in_and_out_of_distribution():
    task = build_task(
        "addition", seed=0, train_samples=10, eval_samples=2,
        arithmetic=ArithmeticSettings(train_digits=(1, 2), eval_lengths=(1, 2, 3, 4)),
    )  # fmt: skip
    verdicts = {1: [True, True], 2: [True, False], 3: [False, False], 4: [True, False]}
    predictions = [{"group": g, "exact_match": v} for g, vs in verdicts.items() for v in vs]
    metrics = summarise(task, predictions)
    assert metrics["exact_match"] == pytest.approx(4 / 8)
    assert metrics["by_group"]["exact_match"] == {"1": 1.0, "2": 0.5, "3": 0.0, "4": 0.5}
    assert metrics["exact_match_in_distribution"] == pytest.approx(0.75)
    assert metrics["exact_match_out_of_distribution"] == pytest.approx(0.25)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time():
    tokenizer = ArithmeticTokenizer()
    model = MathPEForCausalLM(
        preset_config("tiny", pe="alibi", vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1)
    )
    prompts = ["1+2=", "12345+678=", "9*9=", "100-1="]
    batched = generate_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    alone = [generate_completions(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone


def test_evaluate_task_writes_one_prediction_per_item():
    tokenizer = ArithmeticTokenizer()
    torch.manual_seed(0)
    model = MathPEForCausalLM(
        preset_config("tiny", pe="nope", vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1)
    )
    task = build_task(
        "multiplication", seed=0, train_samples=5, eval_samples=3,
        arithmetic=ArithmeticSettings(train_digits=(1, 2), eval_lengths=(1, 2, 3)),
    )  # fmt: skip
    metrics, predictions = evaluate_task(model, tokenizer, task, batch_size=4)
    assert len(predictions) == 9 and metrics["n"] == 9
    assert {"prompt", "completion", "reference", "exact_match", "predicted_answer", "group"} <= set(
        predictions[0]
    )


def abacus_model(tokenizer: ArithmeticTokenizer, **options) -> MathPEForCausalLM:
    torch.manual_seed(0)
    config = preset_config(
        "tiny", pe="abacus", vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
        pe_options={"digit_token_ids": list(digit_token_ids(tokenizer)), **options},
    )  # fmt: skip
    return MathPEForCausalLM(config).eval()


def test_offset_vote_takes_the_majority_and_breaks_ties_by_offset_order(monkeypatch):
    tokenizer = ArithmeticTokenizer()
    model = abacus_model(tokenizer, eval_offset=4)
    answers = {0: ["a", "x", "p"], 1: ["b", "y", "q"], 2: ["b", "x", "r"], 3: ["c", "y", "q"]}

    def fake_generate(model, tokenizer, prompts, **options):
        assert options["max_new_tokens"] == 5
        return answers[model.model.pe.eval_offset]

    monkeypatch.setattr(mathpe.eval.evaluate, "generate_completions", fake_generate)
    completions, votes = offset_vote_completions(
        model, tokenizer, ["1+1=", "2+2=", "3+3="], [0, 1, 2, 3], max_new_tokens=5
    )
    assert completions == ["b", "x", "q"]  # 2 votes each; "x" and "y" tie, and offset 0 came first
    assert votes == [2, 2, 2]
    assert model.model.pe.eval_offset == 4  # restored


def test_offset_vote_with_one_offset_is_plain_generation_at_that_offset():
    tokenizer = ArithmeticTokenizer()
    model = abacus_model(tokenizer, max_offset=20)
    prompts = ["12+345=", "9*9=", "1234+56=", "7-3="]
    plain = {}
    for offset in (0, 7):
        model.model.pe.eval_offset = offset
        plain[offset] = generate_completions(model, tokenizer, prompts, max_new_tokens=6)
    model.model.pe.eval_offset = 0
    assert plain[0] != plain[7]  # the offset matters, so the vote below is not trivially equal
    for offset in (0, 7):
        completions, votes = offset_vote_completions(model, tokenizer, prompts, [offset], max_new_tokens=6)
        assert completions == plain[offset] and votes == [1] * len(prompts)


def test_offset_vote_without_abacus_is_a_clear_error():
    tokenizer = ArithmeticTokenizer()
    model = MathPEForCausalLM(
        preset_config("tiny", pe="rope", vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1)
    )
    with pytest.raises(ValueError, match=r"eval offsets \[0, 10\] need a PE with a random training offset"):
        offset_vote_completions(model, tokenizer, ["1+1="], [0, 10], max_new_tokens=3)
