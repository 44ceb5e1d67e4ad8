"""Position coupling: ids against the reference scheme, random start in training only, the RoPE variant."""

from __future__ import annotations

import pytest
import torch

from mathpe.data.tokenizer import ArithmeticTokenizer
from mathpe.pe import PEShape, build_pe

TOKENIZER = ArithmeticTokenizer()
DIGITS = list(TOKENIZER.digit_token_ids)
HIDDEN = 32


def coupling(name: str = "position_coupling", **options) -> torch.nn.Module:
    return build_pe(name, PEShape(2, 16, HIDDEN, 64), digit_token_ids=DIGITS, **options)


def ids_of(pe: torch.nn.Module, texts: list[str], state=None) -> tuple[torch.Tensor, object]:
    input_ids = torch.tensor([TOKENIZER(text, add_special_tokens=False)["input_ids"] for text in texts])
    embeds = torch.zeros(*input_ids.shape, HIDDEN)
    extra, state = pe.prepare(input_ids=input_ids, inputs_embeds=embeds, attention_mask=None, state=state)
    return extra["coupled_position_ids"], state


def reference_ids(a: int, b: int, start: int = 1) -> tuple[str, list[int]]:
    """The reference's (HanseulJo/position-coupling, ``AdditionDatasetWithCoupledPositions``, no padding)
    text and ids for ``a + b``: operands most significant digit first, reversed answer, ``=`` appended."""
    a_text, b_text, answer = str(a), str(b), str(a + b)
    end = start + max(len(a_text), len(b_text)) + 1
    input_ids = [*range(end - len(a_text), end + 1), *range(end - len(b_text), end + 1)]
    answer_ids = list(range(end - len(answer), end))[::-1]
    return f"{a_text}+{b_text}={answer[::-1]}", input_ids + answer_ids


@pytest.mark.parametrize(("a", "b"), [(123, 45), (95, 7), (0, 0), (99999, 1), (4, 61)])
def test_ids_are_the_mirror_of_the_reference_scheme(a: int, b: int):
    """mathpe's reversed operands mirror the reference's: each token's id is ``end - reference id``."""
    reference_text, reference = reference_ids(a, b)
    end = max(reference)
    text = f"{str(a)[::-1]}+{str(b)[::-1]}={str(a + b)[::-1]}"
    # The same tokens in the same roles: operands reversed, the rest identical.
    assert text.split("=")[1] == reference_text.split("=")[1]
    # Map the reference's ids onto mathpe's token order (operand digits reversed in place).
    a_len, b_len = len(str(a)), len(str(b))
    reordered = [
        *reference[:a_len][::-1],
        reference[a_len],
        *reference[a_len + 1 : a_len + 1 + b_len][::-1],
        *reference[a_len + 1 + b_len :],
    ]
    ids, _ = ids_of(coupling().eval(), [text])
    assert ids[0].tolist() == [end - r for r in reordered]


def test_hand_written_reversed_addition():
    """``321+54=861`` is 123 + 45 = 168 reversed: significance s -> 1 + s, operators and ``=`` -> 0."""
    ids, _ = ids_of(coupling().eval(), ["321+54=861"])
    assert ids[0].tolist() == [1, 2, 3, 0, 1, 2, 0, 1, 2, 3]
    ids, _ = ids_of(coupling(max_start=9, eval_start=5).eval(), ["321+54=861"])
    assert ids[0].tolist() == [6, 7, 8, 5, 6, 7, 5, 6, 7, 8]


def test_random_start_in_training_only_and_one_start_per_sequence():
    pe = coupling(max_start=7, eval_start=3)
    texts = ["321+54=861"] * 400
    runs = torch.tensor([1, 2, 3, 0, 1, 2, 0, 1, 2, 3])
    train_ids, _ = ids_of(pe.train(), texts)
    starts = train_ids - runs
    assert (starts == starts[:, :1]).all()  # one start per sequence
    assert set(starts[:, 0].tolist()) == set(range(8))  # uniform over 0..max_start: every start is drawn
    eval_ids, _ = ids_of(pe.eval(), texts)
    assert (eval_ids == runs + 3).all()


def test_cached_steps_keep_the_sequence_start_in_training():
    torch.manual_seed(0)
    pe = coupling(max_start=50).train()
    head, state = ids_of(pe, ["321+5"] * 8)
    tail, _ = ids_of(pe, ["4=8"] * 8, state=state)
    starts = torch.cat([head, tail], 1) - torch.tensor([1, 2, 3, 0, 1, 2, 0, 1])
    assert (starts == starts[:, :1]).all()
    assert len(set(starts[:, 0].tolist())) > 1


def test_eval_output_is_deterministic_and_ignores_sequence_positions():
    pe = coupling().eval()
    input_ids = torch.tensor([TOKENIZER("321+54=861", add_special_tokens=False)["input_ids"]])
    extra, _ = pe.prepare(input_ids=input_ids, inputs_embeds=torch.zeros(1, 10, HIDDEN), attention_mask=None)
    first = pe.embed(torch.arange(10)[None], input_ids, **extra)
    shifted = pe.embed(torch.arange(10)[None] + 17, input_ids, **extra)
    torch.testing.assert_close(first, shifted)
    torch.testing.assert_close(first, pe.table(extra["coupled_position_ids"]))


def test_bad_options_and_too_long_numbers_give_one_line_errors():
    with pytest.raises(ValueError, match=r"eval_start must be in 0..max_start=4, got 5"):
        coupling(max_start=4, eval_start=5)
    with pytest.raises(ValueError, match=r"max_start must be an integer >= 0, got -1"):
        coupling(max_start=-1)
    pe = coupling(max_digits=3, max_start=0).eval()
    ids, _ = ids_of(pe, ["1234"])
    with pytest.raises(ValueError, match=r"past its table of 4 .*raise max_digits"):
        pe.embed(torch.arange(4)[None], coupled_position_ids=ids)


def test_rope_variant_rotates_by_the_coupled_ids():
    """``position_coupling_rope`` equals RoPE evaluated at the coupled ids, wherever the tokens sit."""
    pe = coupling("position_coupling_rope").eval()
    rope = build_pe("rope", PEShape(2, 16, HIDDEN, 64))
    input_ids = torch.tensor([TOKENIZER("321+54=861", add_special_tokens=False)["input_ids"]])
    extra, _ = pe.prepare(input_ids=input_ids, inputs_embeds=torch.zeros(1, 10, HIDDEN), attention_mask=None)
    cos, sin = pe.cos_sin(torch.arange(10)[None] + 40, torch.float32, **extra)
    expected_cos, expected_sin = rope.cos_sin(torch.tensor([[1, 2, 3, 0, 1, 2, 0, 1, 2, 3]]), torch.float32)
    torch.testing.assert_close(cos, expected_cos)
    torch.testing.assert_close(sin, expected_sin)
