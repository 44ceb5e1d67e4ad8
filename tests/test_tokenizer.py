"""The arithmetic character tokenizer, answer-masked encoding and padding (char and BPE tokenizers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from mathpe.data.arithmetic import ArithmeticTask, generate_examples
from mathpe.data.collate import IGNORE_INDEX, PaddingCollator, encode_example, encode_examples
from mathpe.data.tokenizer import ArithmeticTokenizer, digit_token_ids
from mathpe.pe.digits import digit_run_lengths


@pytest.fixture(scope="module")
def tokenizer() -> ArithmeticTokenizer:
    return ArithmeticTokenizer()


@pytest.fixture(scope="module")
def bpe_tokenizer() -> PreTrainedTokenizerBase:
    """A small byte-level BPE tokenizer, built offline, shaped like GPT-NeoX's (EOS doubles as PAD)."""
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    model.train_from_iterator(["Question: How many apples? Answer: 18 apples, 12 or 180."] * 50, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=model, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def test_round_trip(tokenizer: ArithmeticTokenizer) -> None:
    text = "(12 + 3) * 4 = 60, 7.5 / 2 - 1"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no special tokens added
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(ids)[:3] == ["(", "1", "2"]


def test_special_tokens_and_unknown_characters(tokenizer: ArithmeticTokenizer) -> None:
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id
    assert len(tokenizer) == tokenizer.vocab_size == 23
    ids = tokenizer("1x")["input_ids"]
    assert ids == [tokenizer.convert_tokens_to_ids("1"), tokenizer.unk_token_id]
    assert tokenizer.decode([*ids, tokenizer.eos_token_id], skip_special_tokens=True) == "1"


def test_digit_token_ids(tokenizer: ArithmeticTokenizer, bpe_tokenizer: PreTrainedTokenizerBase) -> None:
    digits = tokenizer.digit_token_ids
    assert tokenizer.convert_ids_to_tokens(list(digits)) == list("0123456789")
    assert digit_token_ids(tokenizer) == list(digits)
    bpe_digits = digit_token_ids(bpe_tokenizer)
    bpe_texts = {bpe_tokenizer.decode([index]) for index in bpe_digits}
    assert set("0123456789") <= bpe_texts
    assert all(text.isdigit() for text in bpe_texts)
    assert bpe_tokenizer.convert_tokens_to_ids("Ġ18") not in bpe_digits  # " 18" starts with a space


def _bpe(pre_tokenizer: pre_tokenizers.PreTokenizer, decoder: decoders.Decoder) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained offline on numbers written after a space and after other characters."""
    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer, model.decoder = pre_tokenizer, decoder
    alphabet = pre_tokenizers.ByteLevel.alphabet() if isinstance(decoder, decoders.ByteLevel) else []
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], initial_alphabet=alphabet)
    model.train_from_iterator(["x=12 34 and 12 34, y=12 34"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>")


@pytest.mark.parametrize(
    ("style", "marker"),
    [
        ("gpt_neox", "Ġ"),  # byte-level BPE, as GPT-NeoX / Pythia
        ("sentencepiece", "▁"),  # Metaspace, as Llama 2: its decoder drops a leading space
    ],
)
def test_digit_tokens_with_a_leading_space_marker_are_not_digits(style: str, marker: str) -> None:
    if style == "gpt_neox":
        bpe = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
    else:
        bpe = _bpe(pre_tokenizers.Metaspace(), decoders.Metaspace())
    vocab = bpe.get_vocab()
    assert {"12", "34", f"{marker}34"} <= set(vocab)
    ids = digit_token_ids(bpe)
    assert ids == sorted(ids)
    assert {vocab["12"], vocab["34"]} <= set(ids)
    assert vocab[f"{marker}34"] not in ids
    assert all(token.isascii() and token.isdigit() for token in bpe.convert_ids_to_tokens(ids))


def test_numbers_apart_stay_apart_for_the_digit_aware_pes() -> None:
    bpe = _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
    encoded = bpe("=12 34", add_special_tokens=False)["input_ids"]
    assert bpe.convert_ids_to_tokens(encoded) == ["=", "12", "Ġ34"]
    ids = digit_token_ids(bpe)
    runs = digit_run_lengths(torch.tensor([[index in ids for index in encoded]]))
    assert runs.tolist() == [[0, 1, 0]]  # not [0, 1, 2]: "12" and " 34" are two numbers


def test_save_and_load_give_identical_ids(tokenizer: ArithmeticTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = ArithmeticTokenizer.from_pretrained(tmp_path)
    batch = ["123+45=861", "9*9=18", "1 - 2 = (3)"]
    assert loaded(batch, padding=True) == tokenizer(batch, padding=True)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.padding_side == "left"
    assert (tmp_path / "vocab.json").is_file()


def test_left_padding_by_default(tokenizer: ArithmeticTokenizer) -> None:
    batch = tokenizer(["1+1=", "123+45="], padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist()[:3] == [tokenizer.pad_token_id] * 3
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]
    right = ArithmeticTokenizer(padding_side="right")(["1+1=", "123+45="], padding=True)
    assert right["attention_mask"][0] == [1, 1, 1, 1, 0, 0, 0]


def test_works_with_a_transformers_collator_and_generate(tokenizer: ArithmeticTokenizer) -> None:
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch = collator([tokenizer("12+3=15"), tokenizer("1+1=2")])
    assert batch["labels"][1].tolist()[:2] == [IGNORE_INDEX, IGNORE_INDEX]  # left padding, masked
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = GPT2LMHeadModel(config).eval()
    prompts = tokenizer(["1+1=", "123+45="], padding=True, return_tensors="pt")
    output = model.generate(**prompts, max_new_tokens=3, do_sample=False)
    assert output.shape == (2, prompts["input_ids"].shape[1] + 3)


def test_encode_example_supervises_answer_and_eos_only(tokenizer: ArithmeticTokenizer) -> None:
    encoded = encode_example(tokenizer, "12+3=", "51")
    assert tokenizer.decode(encoded["input_ids"]) == "12+3=51<eos>"
    assert encoded["labels"] == [IGNORE_INDEX] * 5 + encoded["input_ids"][5:]
    assert encoded["attention_mask"] == [1] * 8
    truncated = encode_example(tokenizer, "12+3=", "51", max_length=6)
    assert truncated["input_ids"] == encoded["input_ids"][:6]
    assert truncated["labels"] == encoded["labels"][:6]


def test_encode_example_with_bpe_keeps_the_prompt_answer_boundary(
    bpe_tokenizer: PreTrainedTokenizerBase,
) -> None:
    prompt, answer = "Question: How many apples?\nAnswer: 1", "8 apples"  # jointly, " 18" would merge
    encoded = encode_example(bpe_tokenizer, prompt, answer)
    prompt_ids = bpe_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = bpe_tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"] == [*prompt_ids, *answer_ids, bpe_tokenizer.eos_token_id]
    assert encoded["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    supervised = [label for label in encoded["labels"] if label != IGNORE_INDEX]
    assert bpe_tokenizer.decode(supervised) == answer + "<|endoftext|>"


@pytest.mark.parametrize("name", ["tokenizer", "bpe_tokenizer"])
def test_encode_examples_matches_each_pair_tokenised_alone(name: str, request: pytest.FixtureRequest) -> None:
    tokenizer = request.getfixturevalue(name)
    pairs = [
        ("12+3=", "51"),
        ("Question: How many apples?\nAnswer: 1", "8 apples"),
        ("7*8=", "65"),
        ("", "0"),
    ]
    for max_length in (None, 3):
        features = encode_examples(tokenizer, pairs, max_length)
        assert len(features) == len(pairs)
        for (prompt, answer), feature in zip(pairs, features, strict=True):
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            assert feature["input_ids"] == (prompt_ids + answer_ids)[:max_length]
            assert feature["labels"] == ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
            assert feature["attention_mask"] == [1] * len(feature["input_ids"])
    assert encode_examples(tokenizer, []) == []


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_collator(tokenizer: ArithmeticTokenizer, side: str) -> None:
    features = [encode_example(tokenizer, "1+1=", "2"), encode_example(tokenizer, "123+45=", "861")]
    batch = PaddingCollator(tokenizer.pad_token_id, padding_side=side, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 16)
    short_ids, short_labels, short_mask = (
        batch[key][0].tolist() for key in ("input_ids", "labels", "attention_mask")
    )
    padding = slice(0, 10) if side == "left" else slice(6, 16)
    content = slice(10, 16) if side == "left" else slice(0, 6)
    assert short_ids[padding] == [tokenizer.pad_token_id] * 10
    assert short_labels[padding] == [IGNORE_INDEX] * 10
    assert short_mask[padding] == [0] * 10
    assert short_ids[content] == features[0]["input_ids"]
    assert short_labels[content] == features[0]["labels"]


def test_padded_batches_train_a_model(tokenizer: ArithmeticTokenizer) -> None:
    examples = generate_examples(ArithmeticTask("add", 1, 3), 4, seed=0)
    features = [encode_example(tokenizer, example.prompt, example.answer) for example in examples]
    batch = PaddingCollator(tokenizer.pad_token_id)(features)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    loss = GPT2LMHeadModel(config)(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()


def test_collator_and_encoder_reject_bad_arguments(tokenizer: ArithmeticTokenizer) -> None:
    with pytest.raises(ValueError, match="padding_side='middle'"):
        PaddingCollator(0, padding_side="middle")
    with pytest.raises(ValueError, match="empty batch"):
        PaddingCollator(0)([])
    with pytest.raises(ValueError, match="max_length=0"):
        encode_example(tokenizer, "1+1=", "2", max_length=0)
