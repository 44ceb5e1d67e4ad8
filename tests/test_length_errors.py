"""scripts/length_errors.py: error kinds, the units digits it looks up, and a run read end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mathpe.cli.main import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "length_errors.py"
spec = importlib.util.spec_from_file_location("length_errors", SCRIPT)
length_errors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(length_errors)


@pytest.mark.parametrize(
    ("completion", "kind"),
    [
        ("a1 b2 c3", "ok"),
        ("a9 b2 c3", "first"),
        ("a1 b9 c3", "middle"),
        ("a1 b2 c9", "last"),
        ("a1 b2 c3 d4", "no_stop"),
        ("a1 b2", "early_stop"),
        ("", "early_stop"),
    ],
)
def test_error_kind(completion, kind):
    assert length_errors.error_kind(completion.split(), ["a1", "b2", "c3"]) == kind


def test_units_digits_are_the_first_of_reversed_operands_and_the_last_in_reading_order():
    fused = ["a3", "b2", "+", "a4", "b5", "="]
    assert length_errors.units_digit_positions(fused, reverse_operands=True) == [0, 3]
    assert length_errors.units_digit_positions(fused, reverse_operands=False) == [1, 4]
    hints = ["<s>", "a", "3", "b", "2", "+", "a", "4", "="]  # unfused hints and a leading special token
    assert length_errors.units_digit_positions(hints, reverse_operands=True) == [2, 7]
    assert length_errors.units_digit_positions(hints, reverse_operands=False) == [4, 7]


def test_a_trained_run_is_read_into_one_row_per_length(tmp_path):
    arguments = [
        "train", "--pe", "nope", "--model_size", "tiny", "--datasets", "addition", "--train_digits", "1-3",
        "--eval_lengths", "2,5", "--index_hints", "--fuse_hints", "--zero_pad", "--train_samples", "64",
        "--eval_samples", "4", "--batch_size", "8", "--max_steps", "2", "--threads", "1", "--quiet",
        "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(arguments) == 0
    rows = length_errors.analyse(tmp_path / "run", lengths=[2, 5, 7], items=2)
    assert [row.split(" | ")[1] for row in rows] == ["2", "5"]  # no length 7 in the run
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert sum(int(count) for count in cells[2:8]) == 4
        lookup = [float(mass) for mass in cells[8].split(" / ")]
        assert len(lookup) == 4 and all(0.0 <= mass <= 1.0 for mass in lookup)  # tiny: 4 layers
