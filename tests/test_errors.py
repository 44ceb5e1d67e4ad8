"""The CLI's error convention: mathpe's own errors give one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mathpe.cli.main import main
from mathpe.data.jsonl import DataUnavailableError, MalformedDataError
from mathpe.errors import ConfigError, DataError, MathPEError
from test_cli import TINY_ADDITION, run_cli


def test_error_types_stay_the_builtin_types_library_callers_catch():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, MathPEError)
    assert issubclass(MalformedDataError, ValueError) and issubclass(MalformedDataError, DataError)
    assert issubclass(DataUnavailableError, FileNotFoundError) and issubclass(DataUnavailableError, DataError)
    from mathpe.train.config import ConfigError as from_config

    assert from_config is ConfigError


@pytest.mark.parametrize("error", ["ValueError", "RuntimeError"])
def test_an_internal_error_keeps_its_traceback_and_exits_1(tmp_path, error):
    """A plain ValueError deep inside (not a user mistake) must not pass for one: traceback, exit 1."""
    script = (
        "import sys, mathpe.train.run as run\n"
        f"def broken(*args, **kwargs): raise {error}('internal failure deep inside')\n"
        "run.build_task = broken\n"
        "from mathpe.cli.main import main\n"
        f"sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "train",
            *TINY_ADDITION,
            "--max_steps",
            "1",
            "--output_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert f"{error}: internal failure deep inside" in result.stderr
    assert "mathpe: error:" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--pe", "rope", "--pe_options", '{"base": 1}'],
            "--pe 'rope' --pe_options '{\"base\": 1}': base must be > 1",
        ),
        (
            ["--pe", "alibi", "--max_steps", "1", "--model_size", "EMPTY_DIR"],
            "empty-model' --pe 'alibi' --pe_options '{}': ",
        ),
    ],
)
def test_a_rejected_model_or_pe_option_value_is_a_one_line_user_error(arguments, message, tmp_path, capsys):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    arguments = [str(empty) if value == "EMPTY_DIR" else value for value in arguments]
    code = main(
        ["train", *TINY_ADDITION, "--max_steps", "1", "--output_dir", str(tmp_path / "run"), *arguments]
    )
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(stderr) == 1 and stderr[0].startswith("mathpe: error: ") and message in stderr[0], stderr


def test_a_user_error_from_the_console_command_is_one_line_and_exit_2(tmp_path):
    result = run_cli("eval", str(tmp_path))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"mathpe: error: {tmp_path / 'config.json'} not found: {tmp_path} is not a mathpe run folder"
    )


def test_compare_with_no_jobs_is_a_user_error(tmp_path, capsys):
    code = main(["compare", "--pe", "rope", *TINY_ADDITION, "--jobs", "0", "--output_dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == "mathpe: error: --jobs must be a positive integer, got 0"
