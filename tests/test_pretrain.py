"""The stand-in base model recipe: corpus, BPE tokenizer, packing, perplexity and ``mathpe pretrain``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

from mathpe.cli.main import main
from mathpe.data import FIXTURES_DIR
from mathpe.data.corpus import math_documents, pack_blocks, token_stream, train_bpe_tokenizer
from mathpe.eval.perplexity import perplexity

TEXT = ["Question: Tom has 12 apples and eats 345.\nAnswer: 12 - 345 = -333\n#### -333"] * 20


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """GSM8K and MATH fixture problems as both the train and the test split."""
    for dataset in ("gsm8k", "math"):
        (tmp_path / dataset).mkdir()
        for split in ("train", "test"):
            shutil.copy(FIXTURES_DIR / f"{dataset}.jsonl", tmp_path / dataset / f"{split}.jsonl")
    return tmp_path


def test_math_documents_hold_problems_with_solutions(data_dir: Path) -> None:
    documents = math_documents("train", data_dir)
    assert len(documents) == 16
    assert documents[0].startswith("Question: ") and "####" in documents[0] and "<<" not in documents[0]
    assert documents[8].startswith("Problem:\n") and "\\boxed" in documents[8]


def test_bpe_tokenizer_splits_digits_and_round_trips() -> None:
    tokenizer = train_bpe_tokenizer(TEXT, vocab_size=300)
    ids = tokenizer("x 12345 y", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    digits = [token.lstrip("Ġ") for token in tokens if any(c.isdigit() for c in token)]
    assert digits == list("12345")
    assert tokenizer.decode(tokenizer(TEXT[0])["input_ids"]) == TEXT[0]
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_token_stream_ends_documents_with_eos_and_packs_blocks() -> None:
    tokenizer = train_bpe_tokenizer(TEXT, vocab_size=300)
    stream = token_stream(tokenizer, TEXT[:3])
    assert (stream == tokenizer.eos_token_id).sum() == 3 and stream[-1] == tokenizer.eos_token_id
    blocks = pack_blocks(stream, 7)
    assert blocks.shape == (stream.numel() // 7, 7)
    assert torch.equal(blocks.flatten(), stream[: blocks.numel()])
    with pytest.raises(ValueError, match="do not fill one block"):
        pack_blocks(stream[:5], 7)


def _tiny_neox(vocab: int = 50) -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return GPTNeoXForCausalLM(config).eval()


def test_perplexity_is_the_exponentiated_mean_loss_over_full_windows() -> None:
    model = _tiny_neox()
    stream = torch.randint(0, 50, (64,))
    expected_loss = torch.stack(
        [model(window[None], labels=window[None]).loss for window in stream.view(4, 16)]
    ).mean()  # every window predicts 15 tokens, so the mean of window means is the token mean
    assert perplexity(model, stream, 16, max_tokens=64, batch_size=3) == pytest.approx(
        math.exp(expected_loss.item()), rel=1e-5
    )
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # uniform predictions: perplexity is the vocabulary size
    assert perplexity(model, stream, 32, max_tokens=64) == pytest.approx(50.0, rel=1e-5)
    with pytest.raises(ValueError, match="not a multiple"):
        perplexity(model, stream, 24, max_tokens=64)


def test_pretrain_writes_a_plain_gpt_neox_folder_and_resumes(data_dir: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "base"
    arguments = ["pretrain", "--data_dir", str(data_dir), "--output_dir", str(output), "--vocab_size", "300",
                 "--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--context", "16",
                 "--batch_size", "4", "--eval_steps", "2", "--save_steps", "2", "--eval_tokens", "128",
                 "--warmup_steps", "1", "--threads", "1", "--quiet"]  # fmt: skip
    assert main([*arguments, "--max_steps", "2"]) == 0
    assert "held-out perplexity by context 16:" in capsys.readouterr().out
    summary = json.loads((output / "pretrain.json").read_text())
    assert summary["pretrain_tokens"] == 2 * 4 * 16
    assert set(summary["ppl"]) == {"16", "32", "64"} and all(value > 1 for value in summary["ppl"].values())
    assert [step for step, _ in summary["heldout_ppl_curve"]] == [2]

    model = AutoModelForCausalLM.from_pretrained(output / "model")  # an ordinary transformers folder
    assert type(model) is GPTNeoXForCausalLM
    assert (
        model.config.rope_parameters["partial_rotary_factor"] == 0.25 and model.config.use_parallel_residual
    )

    assert main([*arguments, "--max_steps", "4"]) == 2  # the folder holds a run: refused without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*arguments, "--max_steps", "4", "--resume"]) == 0
    resumed = json.loads((output / "pretrain.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["pretrain_tokens"] == 4 * 4 * 16
    assert [step for step, _ in resumed["heldout_ppl_curve"]] == [2, 4]
