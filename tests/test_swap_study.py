"""``mathpe swap-study`` at toy scale: a tiny pretrained base, two PEs, the summary's shape and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mathpe.cli.main import main
from mathpe.data import FIXTURES_DIR
from mathpe.train import swap_study

pytestmark = pytest.mark.integration  # a base pretrained, then the study run on it


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A data folder of fixture problems, a base pretrained on it for two steps, and the study's arguments."""
    root = tmp_path_factory.mktemp("swap")
    for dataset in ("gsm8k", "math"):
        (root / "data" / dataset).mkdir(parents=True)
        for split in ("train", "test"):
            shutil.copy(FIXTURES_DIR / f"{dataset}.jsonl", root / "data" / dataset / f"{split}.jsonl")
    assert main(["pretrain", "--data_dir", str(root / "data"), "--output_dir", str(root / "base"),
                 "--vocab_size", "300", "--hidden_size", "32", "--num_layers", "2", "--num_heads", "2",
                 "--context", "16", "--batch_size", "4", "--max_steps", "2", "--eval_steps", "2",
                 "--eval_tokens", "128", "--warmup_steps", "1", "--threads", "1", "--quiet"]) == 0  # fmt: skip
    arguments = ["swap-study", "--base", str(root / "base" / "model"), "--data_dir", str(root / "data"),
                 "--output_dir", str(root / "study"), "--pes", "rope,alibi", "--regimes", "lora_pe",
                 "--adapt_steps", "2", "--eval_steps", "1", "--batch_size", "4", "--eval_tokens", "128",
                 "--eval_items", "2", "--threads", "1"]  # fmt: skip
    assert main(arguments) == 0
    return root / "study", arguments


def test_summary_has_the_issue_shape_and_rope_is_an_identity_swap(study: tuple[Path, list[str]]) -> None:
    summary = json.loads((study[0] / "summary.json").read_text())
    base = summary["base"]
    assert base["pretrain_tokens"] == 2 * 4 * 16 and base["params"] > 0
    assert set(base["ppl"]) == {"16", "32", "64"}
    rope, alibi = summary["pes"]["rope"]["lora_pe"], summary["pes"]["alibi"]["lora_pe"]
    for cell in (rope, alibi):
        assert set(cell["ppl_swapped"]) == set(cell["ppl_adapted"]) == {"16", "32", "64"}
        assert cell["adapt_tokens"] == 2 * 4 * 16 and cell["seconds"] >= 0
        assert [step for step, _ in cell["curve"]] == [0, 1, 2]
        assert cell["curve"][0][1] == cell["ppl_swapped"]["16"]
        assert set(cell["generation"]) == {"gsm8k_strict_match", "addition_exact_match"}
    assert rope["ppl_swapped"] == pytest.approx(
        base["ppl"], rel=1e-6
    )  # the model's own RoPE: nothing changes
    assert alibi["ppl_swapped"]["16"] != pytest.approx(base["ppl"]["16"], rel=1e-6)
    assert alibi["ppl_adapted"] != alibi["ppl_swapped"]  # adaptation trained something
    assert (study[0] / "recovery.png").is_file()
    assert "| alibi | lora_pe |" in (study[0] / "summary.md").read_text()


def test_resume_reads_finished_cells_back_and_a_rerun_is_refused(study, monkeypatch, capsys) -> None:
    folder, arguments = study
    assert main(arguments) == 2
    assert "--resume" in capsys.readouterr().err

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(swap_study, "run_cell", no_training)
    before = json.loads((folder / "summary.json").read_text())["pes"]
    assert main([*arguments, "--resume"]) == 0
    assert json.loads((folder / "summary.json").read_text())["pes"] == before


def test_bad_regime_and_pe_are_one_line_errors(study, capsys) -> None:
    _, arguments = study
    assert main([*arguments, "--regimes", "everything"]) == 2
    assert "unknown regime(s) ['everything']" in capsys.readouterr().err
    assert main([*arguments, "--pes", "rope,ropee"]) == 2
    assert "unknown PE(s) ['ropee']" in capsys.readouterr().err
