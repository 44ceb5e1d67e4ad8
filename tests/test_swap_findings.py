"""``mathpe swap-study``'s findings (recovery target, extrapolation) read off a hand-made summary."""

from __future__ import annotations

from typing import Any

from mathpe.train.swap_study import study_findings, summary_markdown


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
        "base": {"name": "toy", "context": 8, "pretrain_tokens": 1000, "ppl": {"8": 10.0, "16": 11.0, "32": 30.0},
                 "generation": {"gsm8k_strict_match": 0.0, "addition_exact_match": 0.25}},  # fmt: skip
        "settings": {"batch_size": 2},
        "pes": {
            "rope": {"lora_pe": rope},
            "alibi": {"lora_pe": _cell([[0, 40.0], [1, 10.4], [2, 9.0]], 9.0, 9.1)},  # 1.04x at step 1
            "nope": {"lora_pe": _cell([[0, 50.0], [1, 10.6], [2, 9.1]], 9.1, 20.0)},  # 1.06x: not recovered
            "diet": {"lora_pe": _cell([[0, 20.0], [1, 10.5], [2, 9.0]], 9.0, 9.0)},  # exactly 1.05x
            "math_rope": {"lora_pe": _cell([[0, 10.0], [1, 10.0], [2, 9.0]], 9.0, 9.0)},  # not counted
        },
    }


def test_recovery_is_read_at_the_budget_step_against_the_control_and_counts_only_position_changing_pes() -> None:
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
