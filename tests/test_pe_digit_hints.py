"""Index hints inside numbers: the digit-aware PEs give each digit the place it has without hints."""

from __future__ import annotations

import pytest
import torch

from mathpe.data.arithmetic import ArithmeticTask, format_example
from mathpe.data.tokenizer import ArithmeticTokenizer, digit_options, index_hint_token_ids
from mathpe.errors import ConfigError
from mathpe.pe import PEShape, build_pe
from mathpe.pe.digits import digit_run_lengths

TOKENIZER = ArithmeticTokenizer(index_hints=True)
DIGITS = list(TOKENIZER.digit_token_ids)
HINTS = index_hint_token_ids(TOKENIZER)
DIGIT_AWARE = ("abacus", "math_rope", "position_coupling", "position_coupling_rope")


def encode(text: str) -> torch.Tensor:
    return torch.tensor([TOKENIZER(text, add_special_tokens=False)["input_ids"]])


def places(pe: torch.nn.Module, input_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
    embeds = torch.zeros(*input_ids.shape, pe.shape.hidden_size)
    extra, state = pe.prepare(input_ids=input_ids, inputs_embeds=embeds, attention_mask=None, state=state)
    return extra["digit_runs"], state


def test_hint_ids_are_the_letters_and_only_with_a_digit_aware_pe():
    assert [TOKENIZER.convert_ids_to_tokens(i) for i in HINTS[:3]] == ["a", "b", "c"]
    assert len(HINTS) == 52 and not set(HINTS) & set(DIGITS)
    assert index_hint_token_ids(ArithmeticTokenizer()) == []
    assert digit_options("abacus", DIGITS, HINTS)["hint_token_ids"] == HINTS
    assert "hint_token_ids" not in digit_options("abacus", DIGITS)
    assert digit_options("rope", DIGITS, HINTS) == {}


def test_hand_written_runs():
    """``a3b2c1+a5b4=a8b6c1``: digits count 1, 2, 3 through their hints; a hint has the previous digit's place."""
    digits = "0123456789"
    text = "a3b2c1+a5b4=a8b6c1"
    is_digit = torch.tensor([[c in digits for c in text]])
    in_number = torch.tensor([[c in digits or c.isalpha() for c in text]])
    runs = digit_run_lengths(is_digit, in_number=in_number)
    assert runs[0].tolist() == [0, 1, 1, 2, 2, 3, 0, 0, 1, 1, 2, 0, 0, 1, 1, 2, 2, 3]
    # Without hint tokens every letter ends the run: each digit is a one-digit number.
    assert digit_run_lengths(is_digit)[0].tolist() == [0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("pe_name", DIGIT_AWARE)
@pytest.mark.parametrize(("a", "b", "hint_start"), [(321, 45, 0), (99999999, 1, 7), (7, 0, 40)])
def test_digits_keep_their_unhinted_places(pe_name: str, a: int, b: int, hint_start: int):
    """At every digit, the place with hints equals the place of the same problem written without hints."""
    shape = PEShape(2, 16, 32, 256)
    with_hints = build_pe(pe_name, shape, digit_token_ids=DIGITS, hint_token_ids=HINTS)
    without = build_pe(pe_name, shape, digit_token_ids=DIGITS)
    hinted = format_example(ArithmeticTask("add", index_hints=True, reverse_operands=True), a, b, hint_start)
    plain = format_example(ArithmeticTask("add", reverse_operands=True), a, b)
    hinted_ids, plain_ids = encode(hinted.prompt + hinted.answer), encode(plain.prompt + plain.answer)
    hinted_runs, _ = places(with_hints.eval(), hinted_ids)
    plain_runs, _ = places(without.eval(), plain_ids)
    is_hint = torch.isin(hinted_ids, torch.tensor(HINTS))
    assert hinted_runs[~is_hint].tolist() == plain_runs[0].tolist()


@pytest.mark.parametrize("pe_name", DIGIT_AWARE)
def test_cached_chunks_equal_one_forward(pe_name: str):
    """Split anywhere (inside a number, right after a hint), the carried run gives the same places."""
    pe = build_pe(pe_name, PEShape(2, 16, 32, 256), digit_token_ids=DIGITS, hint_token_ids=HINTS).eval()
    input_ids = encode("a3b2c1+a5b4=a8b6c1")
    whole, _ = places(pe, input_ids)
    for cut in range(1, input_ids.shape[1]):
        head, state = places(pe, input_ids[:, :cut])
        tail, _ = places(pe, input_ids[:, cut:], state)
        assert torch.cat([head, tail], 1).tolist() == whole.tolist(), cut


def test_a_token_cannot_be_digit_and_hint():
    with pytest.raises(ConfigError, match=r"hint_token_ids \[3\] are digit_token_ids too"):
        build_pe("abacus", PEShape(2, 16, 32, 256), digit_token_ids=DIGITS, hint_token_ids=[3])


def test_hint_table_is_saved_and_a_run_with_hints_passes_them():
    from mathpe.eval.tasks import ArithmeticSettings
    from mathpe.train.config import RunConfig
    from mathpe.train.setup import resolved_pe_options

    pe = build_pe("abacus", PEShape(2, 16, 32, 256), digit_token_ids=DIGITS, hint_token_ids=HINTS)
    assert "number_table" in pe.state_dict()
    assert (
        "number_table" not in build_pe("abacus", PEShape(2, 16, 32, 256), digit_token_ids=DIGITS).state_dict()
    )
    hinted = RunConfig(pe="abacus", datasets=("addition",), arithmetic=ArithmeticSettings(index_hints=True))
    assert resolved_pe_options(hinted, TOKENIZER)["hint_token_ids"] == HINTS
    plain = RunConfig(pe="abacus", datasets=("addition",))
    assert "hint_token_ids" not in resolved_pe_options(plain, ArithmeticTokenizer())
