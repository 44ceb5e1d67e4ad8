"""Run folders: one run per folder, --resume only with the same settings, --overwrite, damaged checkpoints."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from mathpe.cli.main import main
from mathpe.data import FIXTURES_DIR
from mathpe.errors import ConfigError
from mathpe.eval.report import write_json
from mathpe.train.config import RunConfig
from mathpe.train.run import build_tasks, claim_run_dir, data_sha256, identity_settings, source_revision
from mathpe.train.trainer import checkpoint_problem
from test_cli import TINY_ADDITION, final_weights

SETTINGS = [*TINY_ADDITION, "--max_steps", "4", "--save_steps", "2"]
RUN = ["train", "--pe", "rope", *SETTINGS]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny rope run with checkpoint-2 and checkpoint-4 (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main([*RUN, "--output_dir", str(run_dir)]) == 0
    assert (run_dir / "checkpoint-2").is_dir() and (run_dir / "checkpoint-4").is_dir()
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mathpe: error: "), lines
    return lines[0]


def test_a_second_run_into_a_finished_folder_is_refused_and_overwrite_replaces_it(run_copy, capsys):
    before = (run_copy / "metrics.json").read_text()
    assert main(["train", "--pe", "alibi", *SETTINGS, "--output_dir", str(run_copy)]) == 2
    line = one_error_line(capsys)
    assert str(run_copy) in line and "--resume" in line and "--overwrite" in line
    assert (run_copy / "metrics.json").read_text() == before  # nothing of the finished run was touched

    (run_copy / "stale.txt").write_text("from the run being replaced")
    assert main(["train", "--pe", "alibi", *SETTINGS, "--output_dir", str(run_copy), "--overwrite"]) == 0
    assert json.loads((run_copy / "config.json").read_text())["pe"] == "alibi"
    assert not (run_copy / "stale.txt").exists()  # the old contents were deleted first


def test_a_partial_run_is_refused_too(run_copy, capsys):
    for name in ("metrics.json", "config.json", "model"):
        shutil.rmtree(run_copy / name) if name == "model" else (run_copy / name).unlink()
    assert main([*RUN, "--output_dir", str(run_copy)]) == 2  # a checkpoint alone makes it a run folder
    assert "already holds a run" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--pe", "alibi"], "pe: 'rope' -> 'alibi'"),
        (["--seed", "1"], "seed: 0 -> 1"),
        (["--datasets", "subtraction"], "datasets: ['addition'] -> ['subtraction']"),
        (["--train_samples", "65"], "train_samples: 64 -> 65"),
        (["--train_digits", "1-2"], "arithmetic.train_digits: [1, 3] -> [1, 2]"),
        (["--learning_rate", "0.002"], "learning_rate: None -> 0.002"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(run_copy, capsys, change, named):
    before = (run_copy / "config.json").read_text()
    assert main([*RUN, "--output_dir", str(run_copy), "--resume", *change]) == 2
    line = one_error_line(capsys)
    assert f"--resume: {run_copy} holds a run with other settings" in line and named in line
    assert (run_copy / "config.json").read_text() == before


def test_resume_may_change_the_budget_and_cadence(run_copy, caplog):
    with caplog.at_level("WARNING"):
        code = main([*RUN, "--output_dir", str(run_copy), "--resume", "--max_steps", "6", "--logging_steps", "3",
                     "--eval_batch_size", "5", "--experiment_name", "renamed"])  # fmt: skip
    assert code == 0
    # The tied output embedding is not in the checkpoint, and not reported missing (transformers would).
    assert not [record for record in caplog.records if "missing keys" in record.getMessage()]
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6 and metrics["train"]["resumed_from"].endswith("checkpoint-4")


def test_the_data_is_compared_by_its_hash_not_by_its_folder(tmp_path, caplog):
    def data_dir(name: str, edit: bool = False) -> Path:
        root = tmp_path / name
        (root / "gsm8k").mkdir(parents=True)
        for split in ("train", "test"):
            text = (FIXTURES_DIR / "gsm8k.jsonl").read_text()
            (root / "gsm8k" / f"{split}.jsonl").write_text(
                text.replace("Mia buys", "Mia sells") if edit else text
            )
        return root

    made = RunConfig(datasets=("gsm8k",), data_dir=str(data_dir("a")), output_dir=str(tmp_path / "run"))
    write_json(
        made.run_dir / "config.json",
        {**identity_settings(made, data_sha256(build_tasks(made))), "source": source_revision()},
    )

    moved = dataclasses.replace(made, data_dir=str(data_dir("b")), resume=True)
    claim_run_dir(
        moved, identity_settings(moved, data_sha256(build_tasks(moved)))
    )  # the same files elsewhere: accepted

    edited = dataclasses.replace(made, data_dir=str(data_dir("c", edit=True)), resume=True)
    assert "Mia buys" in (FIXTURES_DIR / "gsm8k.jsonl").read_text()  # the edit changes the data
    with pytest.raises(ConfigError, match=r"other settings \(data_sha256: "):
        claim_run_dir(edited, identity_settings(edited, data_sha256(build_tasks(edited))))


@pytest.mark.skipif(source_revision()["commit"] is None, reason="mathpe does not run from a git checkout")
def test_resuming_under_another_commit_warns_once(tmp_path, caplog):
    config = RunConfig(output_dir=str(tmp_path), train_samples=8, eval_samples=1)
    identity = identity_settings(config, data_sha256(build_tasks(config)))
    write_json(tmp_path / "config.json", {**identity, "source": {"commit": "0" * 40, "clean": True}})
    with caplog.at_level("WARNING"):
        claim_run_dir(dataclasses.replace(config, resume=True), identity)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "started at mathpe commit 000000000000, this is" in warnings[0]


@pytest.mark.skipif(source_revision()["commit"] is None, reason="mathpe does not run from a git checkout")
def test_compare_reads_back_a_run_of_another_commit_silently_and_says_where_it_was_trained(
    tmp_path, caplog, capsys
):
    compare = ["compare", "--pe", "rope", *TINY_ADDITION, "--max_steps", "2", "--save_steps", "2", "--jobs", "1",
               "--output_dir", str(tmp_path)]  # fmt: skip
    assert main(compare) == 0
    config_file = tmp_path / "rope-seed0" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["source"] = {"commit": "0" * 40, "clean": True}
    saved["machine"] |= {"cpu": "Other CPU", "cpu_capability": "AVX2"}
    config_file.write_text(json.dumps(saved))
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert main([*compare, "--resume"]) == 0
    assert not [record for record in caplog.records if "mixes two versions" in record.getMessage()]
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison["read_back_trained_at"] == [
        {"commit": "0" * 40, "cpu": "Other CPU", "cpu_capability": "AVX2"}
    ]
    markdown = (tmp_path / "comparison.md").read_text()
    assert "The runs read back were trained at commit 000000000000 on Other CPU (AVX2)." in markdown
    assert comparison["environment"]["source"] == source_revision()  # the report's own commit, as before


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_resume_skips_a_truncated_newest_checkpoint(run_copy, finished_run, caplog):
    truncate(run_copy / "checkpoint-4" / "model.safetensors")
    assert checkpoint_problem(run_copy / "checkpoint-4") is not None
    assert checkpoint_problem(run_copy / "checkpoint-2") is None
    with caplog.at_level("WARNING"):
        assert main([*RUN, "--output_dir", str(run_copy), "--resume"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint-4 (model.safetensors" in warnings[0]
    assert warnings[0].endswith(str(run_copy / "checkpoint-2"))
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"].endswith("checkpoint-2") and metrics["train"]["steps"] == 4
    expected = final_weights(finished_run)  # steps 3-4 again from checkpoint-2: the same model
    for name, tensor in final_weights(run_copy).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c: truncate(c / "optimizer.pt", 0.9), "optimizer.pt: truncated"),
        (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json: JSONDecodeError"),
        (lambda c: (c / "model.safetensors").unlink(), "no *.safetensors weights"),
        (lambda c: (c / "model.safetensors").write_bytes(b"\xff" * 64), "model.safetensors: "),
    ],
)
def test_a_damaged_checkpoint_is_recognised_without_loading_it(run_copy, damage, problem):
    checkpoint = run_copy / "checkpoint-2"
    assert checkpoint_problem(checkpoint) is None
    damage(checkpoint)
    assert checkpoint_problem(checkpoint).startswith(problem)


def test_resume_with_every_checkpoint_damaged_is_one_line(run_copy, capsys):
    truncate(run_copy / "checkpoint-4" / "model.safetensors")
    (run_copy / "checkpoint-2" / "trainer_state.json").write_text("")
    assert main([*RUN, "--output_dir", str(run_copy), "--resume"]) == 2
    line = one_error_line(capsys)
    assert f"--resume: no intact checkpoint in {run_copy}: checkpoint-4 (model.safetensors" in line
    assert "checkpoint-2 (trainer_state.json" in line and line.endswith("start again with --overwrite")


def test_compare_into_an_existing_comparison_needs_resume_or_overwrite(tmp_path, capsys):
    compare = ["compare", "--pe", "rope", *TINY_ADDITION, "--max_steps", "2", "--save_steps", "2", "--jobs", "1",
               "--output_dir", str(tmp_path)]  # fmt: skip
    loud = [argument for argument in compare if argument != "--quiet"]
    assert main([*loud, "--pe", "rope,alibi"]) == 0
    progress = capsys.readouterr().err.strip().splitlines()
    assert progress[0] == f"mathpe compare: 2 runs, 1 at a time, into {tmp_path}"
    assert re.fullmatch(
        r"\[1/2\] rope seed 0: exact_match \d+\.\d% \(\d+ s\); elapsed \d+ s, ETA \d+ s", progress[1]
    )
    assert re.fullmatch(
        r"\[2/2\] alibi seed 0: exact_match \d+\.\d% \(\d+ s\); elapsed \d+ s, ETA 0 s", progress[2]
    )
    assert len(progress) == 3, progress
    environment = json.loads((tmp_path / "comparison.json").read_text())["environment"]
    assert (
        environment["command"] == ["mathpe", *loud, "--pe", "rope,alibi"]
        and environment["threads_per_run"] == 1
    )
    assert (
        environment["source"] == source_revision() and environment["versions"]["torch"] == torch.__version__
    )
    assert environment["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "torch thread(s) per run on" in (tmp_path / "comparison.md").read_text()

    assert main(compare) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path} already holds a comparison" in line and "--resume" in line and "--overwrite" in line

    assert main([*compare, "--resume", "--learning_rate", "0.01"]) == 2
    assert (
        f"--resume: {tmp_path / 'rope-seed0'} holds a run with other settings (learning_rate"
        in one_error_line(capsys)
    )

    (tmp_path / "stale.txt").write_text("from the comparison being replaced")
    assert main([*compare, "--overwrite"]) == 0
    assert not (tmp_path / "stale.txt").exists() and (tmp_path / "comparison.json").is_file()
    assert not (tmp_path / "alibi-seed0").exists()
    assert capsys.readouterr().err == ""  # --quiet: no progress


def test_compare_resume_generates_each_seeds_data_once(tmp_path, monkeypatch):
    from mathpe.train import run as run_module
    from mathpe.train.compare import claim_comparison_dir

    runs = [
        RunConfig(
            pe=pe,
            seed=seed,
            train_samples=8,
            eval_samples=1,
            output_dir=str(tmp_path / f"{pe}-seed{seed}"),
            resume=True,
        )
        for pe in ("rope", "alibi", "nope")
        for seed in (0, 1)
    ]
    for run in runs:  # finished runs of these settings (their folders hold config.json)
        write_json(run.run_dir / "config.json", identity_settings(run, data_sha256(build_tasks(run))))
    built = []
    monkeypatch.setattr(
        run_module, "build_tasks", lambda config: built.append(config.seed) or build_tasks(config)
    )
    claim_comparison_dir(tmp_path, runs)  # every run's data matches: accepted
    assert sorted(built) == [0, 1]

    other_data = [dataclasses.replace(run, train_samples=9) for run in runs]
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(.*train_samples"):
        claim_comparison_dir(tmp_path, other_data)
