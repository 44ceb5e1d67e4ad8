"""Training examples with the loss masked to the answer, and a padding collator.

Prompt and answer are tokenised separately and their ids concatenated, so a BPE tokenizer (GPT-NeoX's)
cannot merge across the boundary and the prompt's token count is exactly where supervision starts. Put
any delimiter between them into the answer (``" 18"``), as lm-evaluation-harness does with its
``target_delimiter``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
PADDED_KEYS = ("input_ids", "attention_mask", "labels")


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int | None = None
) -> dict[str, list[int]]:
    """``prompt + answer + EOS`` as ids, with labels ``-100`` on the prompt so only answer and EOS count.

    No special tokens are added besides the EOS. Sequences longer than ``max_length`` are cut on the right
    (the answer's end goes first; an example cut inside its prompt has no supervised token left).
    """
    return encode_examples(tokenizer, [(prompt, answer)], max_length)[0]


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], max_length: int | None = None
) -> list[dict[str, list[int]]]:
    """``encode_example`` of every ``(prompt, answer)`` pair, tokenised in two batched calls (a slow
    tokenizer's per-call overhead is most of its time: 0.56x the time on the length studies' pairs, bench
    section 8)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no eos_token; set one before encoding examples")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length} must be >= 1 or None")
    if not pairs:
        return []
    prompts, answers = zip(*pairs, strict=True)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    features = []
    for prompt, answer in zip(prompt_ids, answer_ids, strict=True):
        answer = [*answer, tokenizer.eos_token_id]
        input_ids = (prompt + answer)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
        features.append({"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)})
    return features


@dataclass(frozen=True)
class PaddingCollator:
    """Pads ``input_ids`` (with ``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100) of a batch.

    Right padding suits training; left padding suits batched generation. Features may omit ``labels``
    or ``attention_mask``; other keys are dropped.
    """

    pad_token_id: int
    padding_side: Literal["left", "right"] = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={self.padding_side!r} must be 'left' or 'right'")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={self.pad_to_multiple_of} must be >= 1 or None")

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        width = self._padded_length(max(len(feature["input_ids"]) for feature in features))
        return {
            key: torch.tensor([self._pad(list(feature[key]), width, pad_values[key]) for feature in features])
            for key in PADDED_KEYS
            if key in features[0]
        }

    def _padded_length(self, longest: int) -> int:
        multiple = self.pad_to_multiple_of or 1
        return -(-longest // multiple) * multiple

    def _pad(self, values: list[int], width: int, pad_value: int) -> list[int]:
        padding = [pad_value] * (width - len(values))
        return padding + values if self.padding_side == "left" else values + padding
