"""A character-level tokenizer for arithmetic that is a real ``transformers`` tokenizer.

One token per character over digits, operators ``+ - * / =``, space, parentheses, comma and period, plus
``<pad>``, ``<eos>`` (also the BOS token) and ``<unk>``; with ``index_hints=True`` also the index-hint letters
(``mathpe.data.arithmetic.INDEX_HINTS``), appended after them so the other ids stay the same. With
``fuse_hints=True`` instead, every hint letter and the digit after it are one token (``a3``; 520 tokens
appended after the defaults): a digit's place is then in its own token, so attention can match digits of
equal significance by content alone, which a model without positions (NoPE) cannot do with separate hint
tokens (it cannot tell which hint a digit follows). The text is the same either way. It saves and loads
with ``save_pretrained`` / ``from_pretrained`` and pads on the left by default, so ``generate``, ``Trainer`` and data collators work
with it unchanged. Saved folders name it in tokenizer_config.json's ``auto_map``, so ``AutoTokenizer`` loads it
with ``trust_remote_code=True`` (``mathpe.remote_code``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizer, PreTrainedTokenizerBase

from mathpe.data.arithmetic import INDEX_HINTS
from mathpe.remote_code import TOKENIZER_AUTO_MAP, write_remote_code

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
DIGITS = "0123456789"
SYMBOLS = "+-*/=() ,."
DEFAULT_VOCAB: dict[str, int] = {
    token: index for index, token in enumerate([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, *DIGITS, *SYMBOLS])
}
VOCAB_FILE_NAME = "vocab.json"
#: Fused index-hint tokens: a hint letter and one digit (``a3``), hint-major, digit-minor.
FUSED_HINT_TOKENS: tuple[str, ...] = tuple(hint + digit for hint in INDEX_HINTS for digit in DIGITS)
_HINT_DIGIT_OR_CHARACTER = re.compile(r"[A-Za-z][0-9]|.", re.DOTALL)
#: Ids of the ten digits in the default vocabulary (3..12); the digit ids of random test and benchmark models.
DIGIT_IDS: list[int] = [DEFAULT_VOCAB[digit] for digit in DIGITS]


class ArithmeticTokenizer(PreTrainedTokenizer):
    """One token per character, or per hint letter and digit where the vocabulary has that pair (``a3``);
    unknown characters map to ``<unk>``.

    ``index_hints`` adds the hint letters to the default vocabulary, ``fuse_hints`` the hint-digit pairs
    (``FUSED_HINT_TOKENS``); a saved vocabulary (``vocab_file``) is used as it is.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE_NAME}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        padding_side: str = "left",
        pad_token: str = PAD_TOKEN,
        eos_token: str = EOS_TOKEN,
        bos_token: str = EOS_TOKEN,
        unk_token: str = UNK_TOKEN,
        index_hints: bool = False,
        fuse_hints: bool = False,
        **kwargs: Any,
    ) -> None:
        if index_hints and fuse_hints:
            raise ValueError("index_hints and fuse_hints exclude each other: hint letters alone or fused")
        # The vocabulary must exist before the base constructor, which looks special tokens up in it.
        if vocab_file:
            self._token_to_id = _read_vocab(Path(vocab_file))
        else:
            hints = INDEX_HINTS if index_hints else FUSED_HINT_TOKENS if fuse_hints else ()
            tokens = [*DEFAULT_VOCAB, *hints]
            self._token_to_id = {token: index for index, token in enumerate(tokens)}
        self._id_to_token = {index: token for token, index in self._token_to_id.items()}
        self._fused_ids = sorted(self._token_to_id[t] for t in FUSED_HINT_TOKENS if t in self._token_to_id)
        kwargs.setdefault("clean_up_tokenization_spaces", False)  # its cleanup would delete " ." and " ,"
        kwargs["auto_map"] = TOKENIZER_AUTO_MAP  # saved in tokenizer_config.json
        super().__init__(
            padding_side=padding_side,
            pad_token=pad_token,
            eos_token=eos_token,
            bos_token=bos_token,
            unk_token=unk_token,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return len(self._token_to_id)

    @property
    def digit_token_ids(self) -> tuple[int, ...]:
        """Ids of the tokens ``0`` to ``9``, in digit order."""
        return tuple(self._token_to_id[digit] for digit in DIGITS)

    @property
    def fused_hint_token_ids(self) -> list[int]:
        """Ids of the fused hint-digit tokens in the vocabulary (``a3``), ascending; empty without them."""
        return list(self._fused_ids)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._token_to_id)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        if not self._fused_ids:
            return list(text)
        pieces = _HINT_DIGIT_OR_CHARACTER.findall(text)
        return [token for piece in pieces for token in ([piece] if piece in self._token_to_id else piece)]

    def _convert_token_to_id(self, token: str) -> int:
        index = self._token_to_id.get(token)  # unk_token only when needed: its lookup costs ~5x a dict's
        return self._token_to_id[str(self.unk_token)] if index is None else index

    def _convert_id_to_token(self, index: int) -> str:
        return self._id_to_token.get(index, str(self.unk_token))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoTokenizer") -> None:
        """Do nothing: saved folders name the shim in ``auto_map`` already (see ``mathpe.remote_code``)."""

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> tuple[str, ...]:
        """``PreTrainedTokenizer.save_pretrained``, plus the remote-code shim its ``auto_map`` names."""
        shim = write_remote_code(save_directory)
        return (*super().save_pretrained(save_directory, *args, **kwargs), str(shim))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        path = Path(save_directory) / f"{prefix}{VOCAB_FILE_NAME}"
        path.write_text(json.dumps(self._token_to_id, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return (str(path),)


def digit_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the digit tokens, ascending: the tokens whose vocabulary entry is ASCII digits alone (``7``,
    ``12``); for the character tokenizer, its ten digits. The digit-aware PEs get them as ``digit_token_ids``.

    A BPE token with a leading-space marker (byte-level BPE's ``Ġ12``, as in GPT-NeoX / Pythia; SentencePiece's
    ``▁12``) is not a digit token. The PEs give each digit its place along a run of consecutive digit tokens,
    and the marker starts a new word: were ``Ġ34`` a digit, the two numbers of ``12 34`` (``12``, ``Ġ34``)
    would form one run. The cost: a number written after a space starts its run at its second token, if it
    has one. Tokenizers that split a number from the space before it (Llama 3's) lose nothing.

    The character tokenizer's fused hint-digit tokens (``a3``, ``fuse_hints``) are digits too: each is one
    digit of a number, its hint letter naming the place.
    """
    fused = getattr(tokenizer, "fused_hint_token_ids", [])
    return sorted(
        [index for token, index in tokenizer.get_vocab().items() if _is_ascii_digits(token)] + fused
    )


def index_hint_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the tokens that are one index-hint letter (``INDEX_HINTS``), ascending: the letters of
    ``--index_hints`` text, which the digit-aware PEs keep inside numbers (``hint_token_ids``)."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[letter] for letter in INDEX_HINTS if letter in vocab)


def digit_options(
    pe: str, digit_ids: Sequence[int] = DIGIT_IDS, hint_ids: Sequence[int] = ()
) -> dict[str, list[int]]:
    """``{"digit_token_ids": digit_ids}`` for a PE that takes digit ids (``pe_options``), else ``{}``; with
    ``hint_ids`` (index hints in the data), ``"hint_token_ids"`` too."""
    from mathpe.pe import pe_options

    if "digit_token_ids" not in pe_options(pe):
        return {}
    return {"digit_token_ids": list(digit_ids), **({"hint_token_ids": list(hint_ids)} if hint_ids else {})}


def _is_ascii_digits(text: str) -> bool:
    return bool(text) and all(character in DIGITS for character in text)


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{path}: a vocabulary must map tokens to the ids 0..n-1 without gaps")
    return vocab
