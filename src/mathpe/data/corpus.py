"""Math text for pretraining a stand-in base model, its byte-level BPE tokenizer, and packed token blocks.

mathpe's founding workflow swaps the PE of a pretrained RoPE model (Pythia) and fine-tunes it. Where no
pretrained checkpoint can be downloaded, ``mathpe pretrain`` trains a small GPT-NeoX of Pythia's architecture
on this corpus instead: GSM8K and MATH problems with their worked solutions, in the prompt formats mathpe
evaluates with (``train`` split for training, ``test`` split as held-out text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mathpe.data.gsm8k import load_gsm8k
from mathpe.data.math import load_math

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


def math_documents(split: str, data_dir: str | Path | None = None) -> list[str]:
    """GSM8K then MATH problems of ``split`` (``train`` / ``test``), each with its solution, one string each.

    GSM8K documents are the harness prompt plus the solution without calculator annotations; MATH documents
    are the Minerva prompt plus the full solution.
    """
    gsm8k = [
        example.prompt() + example.target(strip_calculator=True) for example in load_gsm8k(split, data_dir)
    ]
    math = [example.prompt("minerva") + example.target("minerva") for example in load_math(split, data_dir)]
    return gsm8k + math


def train_bpe_tokenizer(documents: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-NeoX's kind) trained on ``documents``, EOS and padding tokens added.

    Unlike GPT-NeoX's tokenizer, every digit is its own token (as in Llama): the digit-aware PEs (``abacus``,
    ``math_rope``) count a number's digits by its tokens, so one digit per token gives them their signal.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, documents: Sequence[str]) -> torch.Tensor:
    """Every document's tokens followed by EOS, concatenated: a 1-D long tensor."""
    ids: list[int] = []
    for encoded in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        ids += [*encoded, tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def pack_blocks(stream: torch.Tensor, block_size: int) -> torch.Tensor:
    """(tokens,) -> (tokens // block_size, block_size): consecutive blocks, the remainder dropped."""
    blocks = stream.numel() // block_size
    if blocks == 0:
        raise ValueError(f"{stream.numel()} tokens do not fill one block of {block_size}")
    return stream[: blocks * block_size].view(blocks, block_size)
