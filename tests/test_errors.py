"""The CLI's error convention: mathpe's own errors give one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mathpe.cli.main import main
from mathpe.data.jsonl import DataUnavailableError, MalformedDataError
from mathpe.errors import ConfigError, DataError, MathPEError
from test_cli import TINY_ADDITION


def test_error_types_stay_the_builtin_types_library_callers_catch():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, MathPEError)
    assert issubclass(MalformedDataError, ValueError) and issubclass(MalformedDataError, DataError)
    assert issubclass(DataUnavailableError, FileNotFoundError) and issubclass(DataUnavailableError, DataError)
    from mathpe.train.config import ConfigError as from_config

    assert from_config is ConfigError


def test_an_internal_error_keeps_its_traceback_and_exits_1(tmp_path):
    """A plain ValueError deep inside (not a user mistake) must not pass for one: traceback, exit 1."""
    script = (
        "import sys, mathpe.train.run as run\n"
        "def broken(*args, **kwargs): raise ValueError('internal failure deep inside')\n"
        "run.build_task = broken\n"
        "from mathpe.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    arguments = ["train", *TINY_ADDITION, "--max_steps", "1", "--output_dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: internal failure deep inside" in result.stderr
    assert "mathpe: error:" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--pe", "rope", "--pe_options", '{"base": 1}'],
            "mathpe: error: PE 'rope': base must be > 1, got 1",
        ),
        (
            ["--pe", "alibi", "--max_steps", "1", "--model_size", "EMPTY_DIR"],
            "mathpe: error: cannot load a model from 'EMPTY_DIR': ",
        ),
    ],
)
def test_a_rejected_model_or_pe_option_value_is_a_one_line_user_error(arguments, message, tmp_path, capsys):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    arguments = [str(empty) if value == "EMPTY_DIR" else value for value in arguments]
    message = message.replace("EMPTY_DIR", str(empty))
    code = main(
        ["train", *TINY_ADDITION, "--max_steps", "1", "--output_dir", str(tmp_path / "run"), *arguments]
    )
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(stderr) == 1 and stderr[0].startswith("mathpe: error: ") and message in stderr[0], stderr


def test_eval_of_a_folder_without_a_run_is_a_user_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mathpe: error: {tmp_path / 'config.json'} not found: {tmp_path} is not a mathpe run folder"
    )


def test_compare_with_no_jobs_is_a_user_error(tmp_path, capsys):
    code = main(["compare", "--pe", "rope", *TINY_ADDITION, "--jobs", "0", "--output_dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == "mathpe: error: --jobs must be a positive integer, got 0"


GSM8K_RUN = ["train", "--pe", "rope", "--model_size", "tiny", "--datasets", "gsm8k", "--train_samples", "4",
             "--eval_samples", "1", "--max_steps", "1", "--batch_size", "2", "--threads", "1", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("broken_train_file", "message"),
    [
        ("", "train.jsonl: no examples (the file is empty)"),
        ("\n  \n", "train.jsonl: no examples (the file is empty)"),
        ('{"question": "q", "answer": "a"}\n{"question": "q", "answer": \n', "train.jsonl:2: not valid JSON"),
        ('{"questions": "q", "answer": "a"}\n', "train.jsonl:1: missing field(s) ['question']; required:"),
    ],
)
def test_a_bad_data_file_is_named_in_one_line(tmp_path, capsys, broken_train_file, message):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    (tmp_path / "gsm8k" / "train.jsonl").write_text(broken_train_file)
    code = main([*GSM8K_RUN, "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "run")])
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(stderr) == 1 and stderr[0].startswith(f"mathpe: error: {tmp_path / 'gsm8k'}/{message}"), stderr


def test_training_data_cut_away_by_max_length_is_named(tmp_path, capsys, caplog):
    (tmp_path / "gsm8k").mkdir()
    for split in ("train", "test"):
        (tmp_path / "gsm8k" / f"{split}.jsonl").write_text(
            '{"question": "1+1?", "answer": "#### 2"}\n{"question": "'
            + "long " * 20
            + '", "answer": "#### 3"}\n'
        )
    run = [*GSM8K_RUN, "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "run")]
    assert main([*run, "--max_length", "12"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mathpe: error: {tmp_path / 'gsm8k' / 'train.jsonl'}: none of the 2 gsm8k training examples keeps an "
        "answer token within --max_length 12; raise --max_length"
    ]
    with caplog.at_level("WARNING"):  # the short problem fits, the long one is left out with a warning
        assert main([*run, "--max_length", "40", "--overwrite"]) == 0
    assert (
        f"{tmp_path / 'gsm8k' / 'train.jsonl'}: 1 of 2 training examples have no answer token" in caplog.text
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["examples"] == 1


def test_a_digit_range_too_small_for_the_held_out_problems_is_a_user_error(tmp_path, capsys):
    arguments = [*TINY_ADDITION, "--train_digits", "1-1", "--eval_lengths", "1", "--eval_samples", "2000"]
    assert main(["train", *arguments, "--max_steps", "1", "--output_dir", str(tmp_path)]) == 2
    assert "no add problem with 1-1 digits left after excluding" in capsys.readouterr().err
