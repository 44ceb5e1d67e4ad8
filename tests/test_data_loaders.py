"""GSM8K and MATH loading (local JSON Lines, hub, errors) and prompt formats."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from mathpe.data import FIXTURES_DIR
from mathpe.data.gsm8k import GSM8KExample, load_gsm8k, read_gsm8k_file, strip_calculator_annotations
from mathpe.data.jsonl import DataUnavailableError, MalformedDataError, read_jsonl, resolve_data_dir
from mathpe.data.math import MINERVA_FEWSHOT_EXAMPLES, MATHExample, load_math, read_math_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """$MATHPE_DATA, else ../shared/data next to the repository; None when absent."""
    candidate = Path(os.environ.get("MATHPE_DATA") or REPO_ROOT.parent / "shared" / "data")
    return candidate if candidate.is_dir() else None


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The shipped fixtures laid out as a data directory (every split holds the same lines)."""
    for dataset, splits in {"gsm8k": ("train", "test"), "math": ("train", "test", "test500")}.items():
        (tmp_path / dataset).mkdir()
        for split in splits:
            shutil.copy(FIXTURES_DIR / f"{dataset}.jsonl", tmp_path / dataset / f"{split}.jsonl")
    return tmp_path


@pytest.fixture
def no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATHPE_DATA", raising=False)


def assert_one_line(error: pytest.ExceptionInfo[BaseException], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# ------------------------------------------------------------------------------------------- fixtures


def test_fixtures_parse() -> None:
    gsm8k = read_gsm8k_file(FIXTURES_DIR / "gsm8k.jsonl")
    math = read_math_file(FIXTURES_DIR / "math.jsonl")
    assert len(gsm8k) == len(math) == 8
    assert [example.final_answer for example in gsm8k][:3] == ["29", "270", "16"]
    assert all(example.answer is not None for example in math)
    assert math[0].answer == "\\frac{1}{2}"


# ------------------------------------------------------------------------------------- prompt formats


def test_gsm8k_prompts_follow_the_harness() -> None:
    shot = GSM8KExample("What is 2+3?", "2+3=<<2+3=5>>5\n#### 5")
    question = GSM8KExample("What is 4+4?", "4+4=<<4+4=8>>8\n#### 8")
    assert question.prompt() == "Question: What is 4+4?\nAnswer:"
    assert question.target() == " 4+4=<<4+4=8>>8\n#### 8"
    assert question.target(strip_calculator=True) == " 4+4=8\n#### 8"
    assert question.prompt(shots=[shot, shot]) == (
        "Question: What is 2+3?\nAnswer: 2+3=<<2+3=5>>5\n#### 5\n\n"
        "Question: What is 2+3?\nAnswer: 2+3=<<2+3=5>>5\n#### 5\n\n"
        "Question: What is 4+4?\nAnswer:"
    )
    assert question.training_pair() == ("Question: What is 4+4?\nAnswer:", " 4+4=8\n#### 8")
    assert strip_calculator_annotations("He pays 2*3 = $<<2*3=6>>6.") == "He pays 2*3 = $6."


def test_math_prompts_follow_the_harness() -> None:
    example = MATHExample("What is $1+1$?", "We get $\\boxed{2}$.", "Level 1", "Algebra")
    assert example.prompt("hendrycks") == "Problem: What is $1+1$?\nAnswer:"
    assert example.target("hendrycks") == " 2"
    assert example.prompt("minerva") == "Problem:\nWhat is $1+1$?\n\nSolution:"
    assert example.target("minerva") == " We get $\\boxed{2}$."
    fewshot = example.prompt("minerva", shots=MINERVA_FEWSHOT_EXAMPLES)
    assert fewshot.startswith("Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}")
    assert fewshot.count("Problem:\n") == 5 and fewshot.count("Final Answer: The final answer is") == 4
    assert fewshot.endswith("I hope it is correct.\n\nProblem:\nWhat is $1+1$?\n\nSolution:")
    assert [shot.answer for shot in MINERVA_FEWSHOT_EXAMPLES] == ["[2,5)", "24", "16", "-\\frac{2}{3}"]
    with pytest.raises(ValueError, match="prompt style 'chat'"):
        example.prompt("chat")
    with pytest.raises(ValueError, match="has no"):
        MATHExample("p", "no box", "Level 1", "Algebra").target("hendrycks")


# ---------------------------------------------------------------------------------------- local files


def test_load_from_a_data_dir(data_dir: Path, no_env_data_dir: None) -> None:
    assert len(load_gsm8k("test", data_dir)) == 8
    assert len(load_gsm8k("train", str(data_dir), limit=3)) == 3
    math = load_math("test500", data_dir, limit=5)
    assert len(math) == 5
    assert (math[0].level, math[0].type, math[0].unique_id) == ("Level 1", "Prealgebra", "fixture/1.json")


def test_mathpe_data_variable_picks_the_directory(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATHPE_DATA", str(data_dir))
    assert resolve_data_dir() == data_dir
    assert len(load_math("train")) == 8
    monkeypatch.setenv("MATHPE_DATA", str(data_dir / "absent"))
    with pytest.raises(DataUnavailableError) as error:
        load_gsm8k("test")
    assert_one_line(error, "absent", "$MATHPE_DATA", "no such data directory")
    assert resolve_data_dir(data_dir) == data_dir  # an explicit argument wins over the variable


def test_missing_directory_and_file(data_dir: Path, no_env_data_dir: None) -> None:
    with pytest.raises(DataUnavailableError) as error:
        load_gsm8k("test", data_dir / "nowhere")
    assert_one_line(error, "nowhere", "no such data directory")
    (data_dir / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_gsm8k("test", data_dir)
    assert_one_line(error, str(data_dir / "gsm8k" / "test.jsonl"), "no such data file")


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"question": "q", "answer": ', "not valid JSON"),
        ('["question", "answer"]', "expected a JSON object, got list"),
        ('{"question": "q"}', "missing field(s) ['answer']"),
        ('{"question": "q", "answer": 5}', "field(s) ['answer'] must be strings"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = tmp_path / "gsm8k.jsonl"
    good = json.dumps({"question": "q", "answer": "#### 1"})
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(MalformedDataError) as error:
        read_gsm8k_file(path)
    assert isinstance(error.value, ValueError)
    assert_one_line(error, f"{path}:3:", reason)


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": "1"}\n\n   \n{"a": "2"}\n')
    assert read_jsonl(path, ["a"]) == [{"a": "1"}, {"a": "2"}]


def test_bad_split_and_limit(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="GSM8K split 'validation' is not one of"):
        load_gsm8k("validation", data_dir)
    with pytest.raises(ValueError, match="MATH split 'dev' is not one of"):
        load_math("dev", data_dir)
    with pytest.raises(ValueError, match="limit=-1"):
        load_math("test", data_dir, limit=-1)


# ------------------------------------------------------------------------------------------------ hub


def test_unreachable_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, no_env_data_dir: None) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataUnavailableError) as error:
        load_gsm8k("test")
    assert_one_line(error, "'openai/gsm8k'", "OfflineModeIsEnabled", "MATHPE_DATA")
    with pytest.raises(DataUnavailableError) as error:
        load_math("test")
    assert_one_line(error, "'EleutherAI/hendrycks_math'", "config 'algebra'")


def test_hub_rows_are_normalised(monkeypatch: pytest.MonkeyPatch, no_env_data_dir: None) -> None:
    calls = []

    def fake_load_dataset(path: str, name: str | None, split: str) -> list[dict]:
        calls.append((path, name, split))
        if path == "HuggingFaceH4/MATH-500":
            return [
                {"problem": "p", "solution": "\\boxed{1}", "answer": "1", "subject": "Algebra", "level": 3}
            ]
        return [{"problem": name, "solution": "\\boxed{2}", "level": "Level 1", "type": "T"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    math = load_math("test", limit=3)
    assert [example.problem for example in math] == ["algebra", "counting_and_probability", "geometry"]
    assert len(calls) == 7
    (math500,) = load_math("test500")
    assert (math500.level, math500.type, math500.answer) == ("Level 3", "Algebra", "1")


def test_offline_hub_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """The real ``datasets`` path with the hub offline and an empty cache: the clear error, quickly."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    environment.pop("MATHPE_DATA", None)
    script = (
        "from mathpe.data.gsm8k import load_gsm8k\n"
        "from mathpe.data.jsonl import DataUnavailableError\n"
        "try:\n    load_gsm8k('test')\nexcept DataUnavailableError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "hub dataset 'openai/gsm8k'" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- the real data


@pytest.mark.skipif(shared_data_dir() is None, reason="no data directory ($MATHPE_DATA or ../shared/data)")
def test_shared_data_loads() -> None:
    directory = shared_data_dir()
    assert len(load_gsm8k("test", directory)) == 1319
    assert len(load_gsm8k("train", directory)) == 7473
    test = load_math("test", directory)
    assert len(test) == 5000
    assert len(load_math("test500", directory)) == 500
    assert len(load_math("train", directory)) == 7500
    assert sum(example.answer is None for example in test) == 0
    assert {example.level for example in test} >= {f"Level {n}" for n in range(1, 6)}
