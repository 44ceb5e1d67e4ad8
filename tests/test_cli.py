"""The pipeline end to end through the command line: outputs, bad input, resume, data parallel."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import ByT5Tokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

import mathpe.train.run as run_module
from mathpe.cli.main import build_parser, main, run_config_from
from mathpe.data import FIXTURES_DIR
from mathpe.eval.tasks import ArithmeticSettings, build_task
from mathpe.train.compare import COMPARE_PRESETS
from mathpe.train.config import RunConfig
from mathpe.train.setup import build_model, build_tokenizer
from pause_at_step import PAUSED_LINE

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_ADDITION = [
    "--model_size", "tiny", "--datasets", "addition", "--train_digits", "1-3", "--eval_lengths", "1-4",
    "--train_samples", "64", "--eval_samples", "3", "--batch_size", "8", "--threads", "1", "--quiet",
]  # fmt: skip


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mathpe.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory) -> Path:
    """GSM8K in the shared layout: ../shared/data when present, else the fixture the project ships."""
    if (SHARED_DATA / "gsm8k" / "train.jsonl").is_file():
        return SHARED_DATA
    root = tmp_path_factory.mktemp("data")
    (root / "gsm8k").mkdir()
    for split in ("train", "test"):
        shutil.copy(FIXTURES_DIR / "gsm8k.jsonl", root / "gsm8k" / f"{split}.jsonl")
    return root


@pytest.fixture(scope="module")
def tiny_gpt_neox(tmp_path_factory) -> Path:
    """A random GPT-NeoX (Pythia layout, partial rotary) with a byte-level tokenizer, saved to a folder."""
    path = tmp_path_factory.mktemp("tiny-gpt-neox")
    tokenizer = ByT5Tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        rotary_pct=0.25,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_train_tiny_addition_writes_every_output(tmp_path):
    code = main(["train", "--pe", "abacus", *TINY_ADDITION, "--max_steps", "6", "--save_steps", "3",
                 "--output_dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    for name in ("config.json", "metrics.json", "predictions.jsonl", "report.md", "accuracy_by_length.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoint-6").is_dir() and not (tmp_path / ".staging" / "checkpoint-6").exists()
    settings = json.loads((tmp_path / "config.json").read_text())
    assert settings["pe"] == "abacus" and settings["seed"] == 0 and "torch" in settings["versions"]
    assert settings["resolved_pe_options"]["digit_token_ids"]  # the tokenizer's digits reach the PE
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    addition = metrics["datasets"]["addition"]
    assert addition["n"] == 4 * 3 and set(addition["by_group"]["exact_match"]) == {"1", "2", "3", "4"}
    assert addition["exact_match_out_of_distribution"] is not None
    assert metrics["train"]["steps"] == 6
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert len(lines) == 12 and {"prompt", "completion", "reference", "exact_match"} <= set(record)

    # `mathpe eval` re-evaluates the saved model: same greedy completions, new sample count.
    (tmp_path / "predictions.jsonl").unlink()
    assert main(["eval", str(tmp_path), "--eval_samples", "2"]) == 0
    again = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(again) == 4 * 2 and json.loads(again[0])["completion"] == record["completion"]

    # ... and with an Abacus offset vote: offset 0 alone is the plain evaluation; three offsets vote.
    assert main(["eval", str(tmp_path), "--eval_samples", "2", "--eval_offsets", "0"]) == 0
    assert [
        json.loads(line)["completion"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()
    ] == [json.loads(line)["completion"] for line in again]
    assert main(["eval", str(tmp_path), "--eval_samples", "2", "--eval_offsets", "0-2"]) == 0
    voted = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(voted) == 8 and all(1 <= record["offset_votes"] <= 3 for record in voted)
    assert json.loads((tmp_path / "metrics.json").read_text())["eval_offsets"] == [0, 1, 2]


def test_founding_command_with_a_local_gpt_neox_on_gsm8k(tmp_path, tiny_gpt_neox, gsm8k_dir):
    """scripts/train_and_eval.py with the founding flags (fp16 needs CUDA, so fp32 here)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_and_eval.py"),
         "--pe", "rope", "--model_size", str(tiny_gpt_neox), "--batch_size", "2", "--max_length", "256",
         "--use_lora", "--gradient_checkpointing", "--experiment_name", "kaggle_math_reasoning",
         "--datasets", "gsm8k", "--data_dir", str(gsm8k_dir), "--max_steps", "3", "--train_samples", "8",
         "--eval_samples", "2", "--output_dir", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["datasets"]["gsm8k"]
    assert metrics["n"] == 2 and {"strict_match", "flexible_extract"} <= set(metrics)
    assert (tmp_path / "model" / "config.json").is_file()
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--pe", "bogus"], "unknown PE 'bogus'; choose one of: abacus, alibi, "),
        (["--datasets", "addition,poetry"], "unknown dataset(s) ['poetry']; choose from: addition"),
        (
            ["--datasets", "gsm8k", "--data_dir", "/nonexistent/data"],
            "--data_dir '/nonexistent/data' is not a dir",
        ),
        (["--model_size", "./no/such/model"], "--model_size './no/such/model' is neither a preset"),
        (["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
        (["--batch_size", "-3"], "--batch_size must be a positive integer, got -3"),
        (["--pe", "learned", "--max_length", "4096"], "--max_length 4096 is beyond what the model supports"),
        (["--pe", "rope", "--max_length", "100000"], "--max_length 100000 is beyond what the model supports"),
        (["--pe_options", "{bad json"], "--pe_options is not valid JSON"),
        (["--pe", "alibi", "--pe_options", '{"base": 3}'], "unknown option(s) ['base'] for PE 'alibi'"),
        (["--warmup_steps", "-1"], "--warmup_steps must be >= 0, got -1"),
        (["--second_digits", "0-1"], "--second_digits 0-1 must satisfy 1 <= min <= max"),
        (["--curriculum_steps", "-2"], "--curriculum_steps must be >= 0 (0: no curriculum), got -2"),
        (
            ["--pe", "rope", "--eval_offsets", "0,10"],
            "--eval_offsets needs a PE trained with a random offset",
        ),
        (["--pe", "abacus", "--eval_offsets", "0,101"], "--eval_offsets [101] outside 0..100"),
        (
            ["--pe", "abacus", "--pe_options", '{"max_offset": 5}', "--eval_offsets", "3-6"],
            "--eval_offsets [6] outside 0..5",
        ),
        (
            ["--datasets", "gsm8k", "--curriculum_steps", "100"],
            "--curriculum_steps 100 needs arithmetic datasets only",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_status_2(arguments, message, tmp_path, capsys):
    code = main(["train", *TINY_ADDITION, "--max_steps", "1", "--output_dir", str(tmp_path), *arguments])
    stderr = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(stderr) == 1 and stderr[0].startswith("mathpe: error: ") and message in stderr[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_fp16_without_cuda_is_a_clear_error_from_the_console_command(tmp_path):
    result = run_cli("train", *TINY_ADDITION, "--fp16", "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mathpe: error: --fp16 needs a CUDA GPU (none is visible); use --bf16 or fp32 on CPU"
    )
    assert "Traceback" not in result.stderr


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_resume_after_a_kill_or_sigterm_matches_the_uninterrupted_run(tmp_path):
    common = ["train", "--pe", "alibi", *TINY_ADDITION, "--train_samples", "400", "--max_steps", "40",
              "--save_steps", "10", "--eval_samples", "1"]  # fmt: skip
    straight = tmp_path / "straight"
    assert run_cli(*common, "--output_dir", str(straight)).returncode == 0
    expected = final_weights(straight)

    for stop in (signal.SIGKILL, signal.SIGTERM):
        interrupted = tmp_path / stop.name
        # Stopped at step 15, between checkpoint-10 and checkpoint-20: the child says when it is there.
        log = interrupted.with_suffix(".stderr")
        with log.open("w") as stderr_file:
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("pause_at_step.py")), "15", *common,
                 "--output_dir", str(interrupted)],
                stdout=subprocess.PIPE, stderr=stderr_file, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            paused = any(line.startswith(PAUSED_LINE) for line in process.stdout)  # until the line or the end
            if paused:
                process.send_signal(stop)
            process.communicate()
        stderr = log.read_text()
        assert paused, f"the run ended before step 15: {stderr[-2000:]}"
        assert (interrupted / "checkpoint-10").is_dir() and not (interrupted / "checkpoint-20").exists()
        assert not (interrupted / "model").exists()
        if stop == signal.SIGTERM:  # one line, no traceback, the conventional status 128 + 15
            assert process.returncode == 143, stderr[-2000:]
            assert stderr.strip().splitlines()[-1] == (
                "mathpe: terminated (SIGTERM); --resume continues from the last checkpoint"
            )
            assert "Traceback" not in stderr
        resumed = run_cli(*common, "--output_dir", str(interrupted), "--resume")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        metrics = json.loads((interrupted / "metrics.json").read_text())
        assert metrics["train"]["resumed_from"].endswith("checkpoint-10")
        for name, tensor in final_weights(interrupted).items():
            torch.testing.assert_close(tensor, expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="needs torchrun")  # fmt: skip
@pytest.mark.parametrize("curriculum_steps", ["0", "3"])
def test_two_process_data_parallel_matches_one_process_with_the_combined_batch(tmp_path, curriculum_steps):
    common = ["train", "--pe", "rope", *TINY_ADDITION, "--train_samples", "16", "--max_steps", "4",
              "--logging_steps", "1", "--eval_samples", "1", "--save_steps", "100",
              "--curriculum_steps", curriculum_steps]  # fmt: skip
    single = tmp_path / "single"
    assert run_cli(*common, "--batch_size", "8", "--output_dir", str(single)).returncode == 0
    parallel = tmp_path / "parallel"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mathpe.cli.main",
         *common, "--batch_size", "4", "--output_dir", str(parallel)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((single / "metrics.json").read_text())["train"]["loss_history"]
    two = json.loads((parallel / "metrics.json").read_text())["train"]["loss_history"]
    assert len(one) == len(two) == 4
    for (step_one, loss_one), (step_two, loss_two) in zip(one, two, strict=True):
        assert step_one == step_two and loss_one == pytest.approx(loss_two, rel=2e-3)
    expected = final_weights(single)
    for name, tensor in final_weights(parallel).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-4, rtol=1e-3)


def test_a_diverging_run_stops_with_a_clear_message_and_keeps_only_good_checkpoints(tmp_path, capsys):
    code = main(["train", "--pe", "rope", *TINY_ADDITION, "--learning_rate", "1e12", "--max_steps", "30",
                 "--logging_steps", "1", "--save_steps", "1", "--output_dir", str(tmp_path)])  # fmt: skip
    message = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(message) == 1 and "the training loss became NaN/inf at step" in message[0]
    assert not (tmp_path / "model").exists()
    for checkpoint in tmp_path.glob("checkpoint-*"):
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert all(torch.isfinite(tensor).all() for tensor in weights.values()), checkpoint.name


def test_compare_writes_one_table_and_one_plot(tmp_path, capsys):
    code = main(["compare", "--pe", "rope,alibi", *TINY_ADDITION, "--max_steps", "4", "--jobs", "1",
                 "--seeds", "0,1", "--save_steps", "2", "--select_best", "--output_dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "| rope |" in table and "| alibi |" in table and "4 runs (2 PEs x 2 seeds)" in table
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert set(comparison["pes"]) == {"rope", "alibi"} and comparison["seeds"] == [0, 1]
    rope = comparison["pes"]["rope"]["addition"]
    assert len(rope["per_seed"]) == 2 and set(rope["by_length_mean"]) == {"1", "2", "3", "4"}
    assert len(rope["best_checkpoint"]["per_seed"]) == 2 and "best ckpt: longer (%)" in table
    best = json.loads((tmp_path / "rope-seed0" / "metrics.json").read_text())["best_checkpoint"]
    assert Path(best["checkpoint"]).parent == tmp_path / "rope-seed0" and Path(best["checkpoint"]).is_dir()
    assert (tmp_path / "accuracy_by_length.png").is_file()
    assert (tmp_path / "alibi-seed1" / "metrics.json").is_file()
    markdown = (tmp_path / "comparison.md").read_text()
    assert "## addition: exact match (%) by operand length" in markdown
    assert "| PE | 1 | 2 | 3 | 4 |" in markdown
    rope_by_length = " | ".join(f"{100 * rope['by_length_mean'][length]:.1f}" for length in "1234")
    assert f"| rope | {rope_by_length} |" in markdown

    # --resume reads finished runs back instead of training them again.
    (tmp_path / "rope-seed0" / "model").rename(tmp_path / "rope-seed0" / "model-moved")
    code = main(["compare", "--pe", "rope", *TINY_ADDITION, "--max_steps", "4", "--jobs", "1", "--seeds", "0",
                 "--save_steps", "2", "--select_best", "--resume", "--output_dir", str(tmp_path)])  # fmt: skip
    assert code == 0 and not (tmp_path / "rope-seed0" / "model").exists()
    again = json.loads((tmp_path / "comparison.json").read_text())["pes"]["rope"]["addition"]
    assert again["per_seed"] == rope["per_seed"][:1]
    assert "(1 runs read back from earlier, not timed)" in (tmp_path / "comparison.md").read_text()


def test_a_best_checkpoint_at_the_last_step_is_the_final_model_and_is_not_evaluated_again(
    tmp_path, monkeypatch
):
    loaded = []
    real_load = run_module.load_saved_model
    monkeypatch.setattr(
        run_module, "load_saved_model", lambda path, config: loaded.append(path) or real_load(path, config)
    )
    config = RunConfig(pe="rope", model_size="tiny", arithmetic=ArithmeticSettings(train_digits=(1, 2), eval_lengths=(1, 2)),
                       eval_samples=2, select_best=True)  # fmt: skip
    tokenizer = build_tokenizer(config)
    tasks = run_module.build_tasks(config)
    run_dir = tmp_path / "run"
    for step in (2, 4):
        build_model(config, tokenizer).save_pretrained(run_dir / f"checkpoint-{step}")
    last = run_module.evaluate_checkpoint(config, tokenizer, tasks, run_dir / "checkpoint-4", validation_loss=0.5,
                                          device=torch.device("cpu"), final_step=4)  # fmt: skip
    assert last == {"checkpoint": str(run_dir / "checkpoint-4"), "validation_loss": 0.5} and loaded == []
    earlier = run_module.evaluate_checkpoint(config, tokenizer, tasks, run_dir / "checkpoint-2", validation_loss=0.7,
                                             device=torch.device("cpu"), final_step=4)  # fmt: skip
    assert loaded == [run_dir / "checkpoint-2"] and earlier["datasets"]["addition"]["n"] == 2 * 2

    # The run's metrics.json gives the last-step checkpoint the final model's metrics.
    train_stats = {"steps": 4, "best_checkpoint": str(run_dir / "checkpoint-4")}
    config = dataclasses.replace(config, output_dir=str(run_dir))
    result = run_module.evaluate_and_report(config, build_model(config, tokenizer), tokenizer, tasks, train_stats,
                                            best=last, progress=False)  # fmt: skip
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["best_checkpoint"] == {**last, "datasets": written["datasets"]}
    assert result.best == {**last, "datasets": result.metrics}


def test_eval_again_evaluates_the_best_checkpoint_too_even_after_the_run_folder_moved(tmp_path, caplog):
    made = tmp_path / "made"
    code = main(["train", "--pe", "rope", *TINY_ADDITION, "--max_steps", "4", "--save_steps", "2", "--select_best",
                 "--output_dir", str(made)])  # fmt: skip
    assert code == 0
    before = json.loads((made / "metrics.json").read_text())["best_checkpoint"]
    assert before["datasets"]["addition"]["n"] == 4 * 3
    moved = made.rename(tmp_path / "moved")
    assert main(["eval", str(moved), "--eval_samples", "2"]) == 0
    best = json.loads((moved / "metrics.json").read_text())["best_checkpoint"]
    assert Path(best["checkpoint"]) == moved / Path(before["checkpoint"]).name
    assert best["validation_loss"] == before["validation_loss"]
    assert best["datasets"]["addition"]["n"] == 4 * 2  # evaluated again, with the new sample count

    shutil.rmtree(best["checkpoint"])
    with caplog.at_level("WARNING"):
        assert main(["eval", str(moved), "--eval_samples", "2"]) == 0
    assert "is gone" in caplog.text
    assert "best_checkpoint" not in json.loads((moved / "metrics.json").read_text())


def test_a_presets_switches_can_be_turned_off_and_on():
    arguments = COMPARE_PRESETS["addition-length"].arguments
    assert arguments["zero_pad"] and arguments["fuse_hints"]
    parser = build_parser(arguments)
    args = parser.parse_args(["compare", "--preset", "addition-length", "--no_fuse_hints", "--no_zero_pad"])
    config = run_config_from(args, "nope")
    assert (config.arithmetic.zero_pad, config.arithmetic.index_hints, config.arithmetic.fuse_hints) == (
        False,
        True,
        False,
    )
    # A default-True switch turns back on; the last switch given wins.
    args = build_parser().parse_args(["train", "--no_reverse_operands", "--reverse_operands"])
    assert run_config_from(args, "rope").arithmetic.reverse_operands
    assert not build_parser().parse_args(["train", "--zero_pad", "--no_zero_pad"]).zero_pad


@pytest.mark.parametrize("preset", sorted(COMPARE_PRESETS))
def test_every_compare_preset_builds_valid_runs(preset):
    """A preset's settings parse and validate for each of its PEs; its tasks build (small samples)."""
    arguments = COMPARE_PRESETS[preset].arguments
    args = build_parser(arguments).parse_args(["compare", "--preset", preset])
    for pe in COMPARE_PRESETS[preset].pes:
        config = run_config_from(args, pe)
        assert config.pe == pe and config.max_steps == arguments["max_steps"]
    task = build_task(
        config.datasets[0], seed=0, train_samples=200, eval_samples=5, arithmetic=config.arithmetic
    )
    lengths = [item.group for item in task.eval_items]
    assert sorted(set(lengths)) == sorted(arguments["eval_lengths"])
    if preset == "multiplication-length":  # n-digit x 1-digit, n up to 32 in evaluation

        def digits(text: str) -> int:
            return sum(character.isdigit() for character in text)

        assert all(digits(prompt.split("*")[1]) == 1 for prompt, _ in task.train_pairs)
        assert max(digits(item.prompt.split("*")[0]) for item in task.eval_items) == 32
