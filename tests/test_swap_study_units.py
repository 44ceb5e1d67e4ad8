"""``mathpe swap-study`` without a study: findings read off a hand-made summary, and what each regime trains."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from mathpe.train.swap_study import REGIMES, make_trainable, study_findings, summary_markdown


def _cell(curve: list[list[float]], ppl_1x: float, ppl_4x: float) -> dict[str, Any]:
    return {
        "ppl_swapped": {"8": curve[0][1], "16": curve[0][1], "32": curve[0][1]},
        "ppl_adapted": {"8": ppl_1x, "16": ppl_1x, "32": ppl_4x},
        "adapt_tokens": 4 * 2 * 8,
        "seconds": 1.0,
        "curve": curve,
        "generation": {"gsm8k_strict_match": 0.0, "addition_exact_match": 0.5},
    }


def _summary() -> dict[str, Any]:
    # 1,000 pretraining tokens, 16 tokens a step: the 2% budget (20 tokens) ends at step 1.
    rope = _cell([[0, 10.0], [1, 10.0], [2, 9.0]], 9.0, 9.5)
    return {
        "base": {
            "name": "toy",
            "context": 8,
            "pretrain_tokens": 1000,
            "ppl": {"8": 10.0, "16": 11.0, "32": 30.0},
            "generation": {"gsm8k_strict_match": 0.0, "addition_exact_match": 0.25},
        },
        "settings": {"batch_size": 2},
        "pes": {
            "rope": {"lora_pe": rope},
            "alibi": {"lora_pe": _cell([[0, 40.0], [1, 10.4], [2, 9.0]], 9.0, 9.1)},  # 1.04x at step 1
            "nope": {"lora_pe": _cell([[0, 50.0], [1, 10.6], [2, 9.1]], 9.1, 20.0)},  # 1.06x: not recovered
            "diet": {"lora_pe": _cell([[0, 20.0], [1, 10.5], [2, 9.0]], 9.0, 9.0)},  # exactly 1.05x
            "math_rope": {"lora_pe": _cell([[0, 10.0], [1, 10.0], [2, 9.0]], 9.0, 9.0)},  # not counted
        },
    }


def test_recovery_is_read_at_the_budget_step_against_the_control_and_counts_only_position_changing_pes() -> (
    None
):
    found = study_findings(_summary())["lora_pe"]
    assert found["step"] == 1 and found["tokens_fraction"] == 16 / 1000
    assert found["ppl_ratio_to_rope"]["alibi"] == 10.4 / 10.0
    assert found["recovered"] == ["rope", "alibi", "diet", "math_rope"]
    assert found["position_changing_recovered"] == ["alibi", "diet"]
    assert found["target_met"] is False  # two of five, not three


def test_extrapolation_compares_4x_with_1x_within_ten_percent() -> None:
    found = study_findings(_summary())["lora_pe"]
    assert found["extrapolate"] == ["rope", "alibi", "diet", "math_rope"]  # rope: 9.5 / 9.0 = 1.056
    assert found["do_not_extrapolate"] == ["nope"]


def test_no_findings_without_pretraining_tokens_and_the_markdown_states_them() -> None:
    summary = _summary()
    summary["findings"] = study_findings(summary)
    text = summary_markdown(summary)
    assert "target >= 3: not met" in text and "| alibi | lora_pe |" in text and "| 50.0 |" in text
    summary["base"]["pretrain_tokens"] = None
    assert study_findings(summary) == {}


@pytest.mark.parametrize("regime", list(REGIMES))
def test_each_regime_trains_lora_and_exactly_its_module_types(regime: str) -> None:
    config = GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    model = make_trainable(GPTNeoXForCausalLM(config), regime, lora_r=2)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    lora = {name for name in trainable if "lora_" in name}
    assert lora and all("attention" in name for name in lora)
    expected = {
        f"{name}.{parameter_name}"
        for name, module in model.named_modules()
        if isinstance(module, REGIMES[regime]) and "lora_" not in name
        for parameter_name, _ in module.named_parameters(recurse=False)
    }
    assert trainable - lora == expected
    if regime == "full":
        assert all(parameter.requires_grad for parameter in model.parameters())
    elif regime == "lora_pe":
        assert trainable == lora  # a native GPT-NeoX has no PE parameters
    else:
        assert any("layernorm" in name for name in expected) and any("embed_in" in name for name in expected)
