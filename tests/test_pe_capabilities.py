"""PE capabilities: every registered PE declares them consistently, and generic code asks for them instead of
naming a PE."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from mathpe.errors import ConfigError
from mathpe.pe import KINDS, PEShape, PositionalEncoding, build_pe, list_pes, pe_class, pe_options
from mathpe.train.config import MAX_LENGTH_MULTIPLE, RunConfig

SHAPE = PEShape(num_heads=2, head_dim=8, hidden_size=16, max_position=16)
DIGITS = list(range(3, 13))
SOURCE = Path(__file__).resolve().parents[1] / "src" / "mathpe"


def build(name: str, **options) -> PositionalEncoding:
    if "digit_token_ids" in pe_options(name):
        options.setdefault("digit_token_ids", DIGITS)
    return build_pe(name, SHAPE, **options)


@pytest.mark.parametrize("name", list_pes())
def test_constructor_takes_the_shape_then_keyword_only_options(name: str):
    parameters = list(inspect.signature(pe_class(name).__init__).parameters.values())[1:]
    assert parameters[0].name == "shape" and parameters[0].kind is inspect.Parameter.POSITIONAL_ONLY
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[1:])
    assert pe_options(name) == {p.name: p.default for p in parameters[1:]}
    pe = build(name)
    assert pe.shape == SHAPE and pe.kind in KINDS and pe.registry_name == name


@pytest.mark.parametrize("name", list_pes())
def test_position_limit_is_what_the_pe_enforces(name: str):
    pe = build(name)
    limit = pe_class(name).position_limit(SHAPE.max_position)
    assert pe.max_supported_position == limit
    longest = MAX_LENGTH_MULTIPLE * SHAPE.max_position if limit is None else limit
    pe.check_positions(torch.arange(longest)[None])
    if limit is not None:
        with pytest.raises(ConfigError, match=f"supports positions 0..{limit - 1}, got position {limit}"):
            pe.check_positions(torch.arange(limit + 1)[None])


def test_position_limits_of_the_zoo():
    limited = {name: pe_class(name).position_limit(64) for name in list_pes()}
    assert {name: limit for name, limit in limited.items() if limit is not None} == {"learned": 64}


def digit_inputs(pe: PositionalEncoding) -> dict[str, torch.Tensor]:
    """What ``pe.prepare`` gives for a sum with numbers, in eval mode."""
    ids = torch.tensor([[3, 4, 5, 1, 6, 7, 2, 8, 9, 10]])
    extra, _ = pe.eval().prepare(input_ids=ids, inputs_embeds=torch.zeros(1, 10, 16), attention_mask=None)
    return extra


@pytest.mark.parametrize("name", list_pes())
def test_eval_variants_are_declared_consistently(name: str):
    cls = pe_class(name)
    variants = cls.eval_variants({})
    pe = build(name)
    if not variants:
        assert cls.eval_variant_option is None and cls.eval_variant_limit_option is None
        with (
            pytest.raises(ConfigError, match=f"PE '{name}' has no eval-time variants"),
            pe.using_eval_variant(0),
        ):
            pass
        return
    defaults = pe_options(name)
    option, limit_option = cls.eval_variant_option, cls.eval_variant_limit_option
    assert {option, limit_option} <= set(defaults)
    assert variants == range(defaults[limit_option] + 1) and defaults[option] in variants
    assert cls.eval_variants({limit_option: 3}) == range(4)
    plain = digit_inputs(pe)
    with pe.using_eval_variant(3):
        assert getattr(pe, option) == 3
        shifted = digit_inputs(pe)
    assert getattr(pe, option) == defaults[option]  # restored
    assert any(
        not torch.equal(plain[key], shifted[key]) for key in plain
    )  # the variant reaches the PE's inputs
    out_of_range = f"{option} must be in 0..{limit_option}={variants.stop - 1}"
    with pytest.raises(ConfigError, match=out_of_range), pe.using_eval_variant(variants.stop):
        pass
    assert getattr(pe, option) == defaults[option]
    # Training draws every variant (uniform over them), one per sequence.
    drawn = build(name, **{limit_option: 2}).train().sequence_variants(torch.zeros(200, dtype=torch.long))
    assert set(drawn.tolist()) == {0, 1, 2}


def test_run_settings_ask_the_pe_for_its_eval_variants_and_length():
    RunConfig(pe="position_coupling", eval_offsets=(0, 64)).check_eval_offsets()
    with pytest.raises(ConfigError, match=r"--eval_offsets \[65\] outside 0..64 \(the PE's max_start\)"):
        RunConfig(pe="position_coupling", eval_offsets=(65,)).check_eval_offsets()
    with pytest.raises(ConfigError, match="one with eval-time variants: abacus, position_coupling"):
        RunConfig(pe="rope", eval_offsets=(0,)).check_eval_offsets()
    RunConfig(pe="rope", max_length=8 * 32).check_max_length(32)
    with pytest.raises(ConfigError, match="PE 'learned' supports 32 positions"):
        RunConfig(pe="learned", max_length=33).check_max_length(32)


def test_rope_types_name_one_pe_each_and_are_its_scalings():
    owners: dict[str, list[str]] = {}
    for name in list_pes():
        for rope_type in pe_class(name).rope_types:
            owners.setdefault(rope_type, []).append(name)
            assert pe_class(name).kind == "rotary"
            if rope_type != "default":  # a scaled RoPE: the PE takes it as its scaling option
                build(name, scaling=rope_type)
    assert owners == {
        "default": ["rope"],
        "linear": ["long_rope"],
        "dynamic": ["long_rope"],
        "yarn": ["long_rope"],
    }


#: Outside pe/, only benchmarks that compare with other libraries may compare against PE names (presets name
#: PEs in lists and defaults, which this check does not flag).
NAMING_ALLOWED = ("bench/",)


def pe_names_branched_on(path: Path) -> list[str]:
    """``line: name`` for each registry name compared against (``==``, ``in``, ...) and each PE class imported."""
    names, classes = set(list_pes()), {pe_class(name).__name__ for name in list_pes()}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for operand in ast.walk(node):
                if isinstance(operand, ast.Constant) and operand.value in names:
                    found.append(f"{node.lineno}: {operand.value}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mathpe.pe"):
            found += [f"{node.lineno}: {alias.name}" for alias in node.names if alias.name in classes]
    return found


def test_generic_code_never_branches_on_a_pe_name():
    files = [path for path in SOURCE.rglob("*.py") if "pe" not in path.relative_to(SOURCE).parts[:1]]
    offending = {
        str(path.relative_to(SOURCE)): found
        for path in files
        if not str(path.relative_to(SOURCE)).startswith(NAMING_ALLOWED)
        and (found := pe_names_branched_on(path))
    }
    assert offending == {}, "ask the PE for a capability (mathpe.pe.base) instead of naming it"
    assert pe_names_branched_on(SOURCE / "bench" / "models.py")  # the check finds what it looks for
