"""``--probe_steps``: periodic exact match on held-out in-distribution problems, and ``steps_to_95``."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import TrainerControl, TrainerState, TrainingArguments

import mathpe.train.trainer as trainer_module
from mathpe.cli.main import main
from mathpe.eval.tasks import ArithmeticSettings, build_task
from mathpe.train.compare import write_comparison
from mathpe.train.config import RunConfig
from mathpe.train.setup import build_model, build_tokenizer
from mathpe.train.trainer import ProbeCallback
from test_cli import TINY_ADDITION, final_weights

SMALL = ArithmeticSettings(train_digits=(1, 2), eval_lengths=(1, 2))


def small_task(name: str = "addition"):
    return build_task(name, seed=0, train_samples=8, eval_samples=1, arithmetic=SMALL)


def run_steps(callback: ProbeCallback, last: int, model: torch.nn.Module) -> None:
    """Drive ``callback`` as ``Trainer`` does through steps 1..``last`` (``should_training_stop`` at the last)."""
    state, control = TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    callback.on_train_begin(args, state, control)
    for step in range(1, last + 1):
        state.global_step = step
        control.should_training_stop = step == last
        callback.on_step_end(args, state, control, model=model)


@pytest.fixture
def scripted_scores(monkeypatch):
    """``evaluate_task`` replaced by one returning the next scripted score per call; records the tasks."""
    scores, seen = [], []

    def fake_evaluate_task(model, tokenizer, task, *, batch_size):
        seen.append(task)
        return {"headline": "exact_match", "exact_match": scores.pop(0)}, []

    monkeypatch.setattr(trainer_module, "evaluate_task", fake_evaluate_task)
    return scores, seen


def test_history_steps_are_the_multiples_of_probe_steps_and_the_last(scripted_scores):
    scores, seen = scripted_scores
    scores += [0.1, 0.5, 0.96, 0.9, 0.97]
    task = small_task()
    callback = ProbeCallback(3, types.SimpleNamespace(padding_side="right"), [task], items=20)
    run_steps(callback, 13, torch.nn.Linear(1, 1))
    assert [step for step, _ in callback.history] == [3, 6, 9, 12, 13]
    assert [score for _, score in callback.history] == [0.1, 0.5, 0.96, 0.9, 0.97]
    assert callback.first_step_at(0.95) == 9  # the first, though a later probe falls back below
    # The probe scores the first ``items`` held-out pairs, graded against their targets.
    assert [(item.prompt, item.reference) for item in seen[0].eval_items] == task.validation_pairs[:20]


def test_steps_to_95_counts_exactly_95_percent_and_averages_the_tasks(scripted_scores):
    scores, _ = scripted_scores
    scores += [0.9, 0.5, 1.0, 0.9, 0.95, 0.94]  # addition, multiplication at each of steps 2, 4, 5
    tasks = [small_task("addition"), small_task("multiplication")]
    callback = ProbeCallback(2, types.SimpleNamespace(padding_side="right"), tasks)
    run_steps(callback, 5, torch.nn.Linear(1, 1))
    assert callback.history == [[2, 0.7], [4, 0.95], [5, 0.945]]
    assert callback.first_step_at(0.95) == 4
    assert callback.first_step_at(0.99) is None


def test_a_probe_draws_no_random_numbers_and_leaves_the_model_training():
    config = RunConfig(pe="abacus", arithmetic=SMALL)  # abacus draws random offsets in train mode
    tokenizer = build_tokenizer(config)
    model = build_model(config, tokenizer).train()
    tokenizer.padding_side = "right"
    callback = ProbeCallback(1, tokenizer, [small_task()], items=8, batch_size=4)
    rng = torch.get_rng_state()
    score = callback.score(model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(module.training for module in model.modules())
    assert tokenizer.padding_side == "right"
    assert 0.0 <= score <= 1.0


def test_the_history_round_trips_through_a_checkpoints_trainer_state(tmp_path):
    """Saved as ``Trainer`` saves it (``stateful_callbacks`` in trainer_state.json), read back at train begin."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    before = ProbeCallback(10)
    before.history = [[10, 0.25], [20, 0.96]]
    TrainerState(stateful_callbacks=[before]).save_to_json(str(tmp_path / "trainer_state.json"))
    after = ProbeCallback(10)
    after.on_train_begin(
        args, TrainerState.load_from_json(str(tmp_path / "trainer_state.json")), TrainerControl()
    )
    assert after.history == before.history and after.first_step_at(0.95) == 20

    fresh, new = (
        TrainerState(),
        ProbeCallback(10),
    )  # a checkpoint saved without the callback: it gets an entry
    new.on_train_begin(args, fresh, TrainerControl())
    assert new.history == [] and fresh.stateful_callbacks["ProbeCallback"] == new.state()


def fake_summary(
    pe: str, seed: int, steps_to_95: int | None, probed: bool = True, scores: tuple[float, float] = (0.9, 0.1)
) -> dict:
    """A run's summary whose in-distribution (length 1) and longer (length 2) exact match are ``scores``."""
    in_distribution, longer = scores
    metrics = {
        "headline": "exact_match",
        "exact_match": (in_distribution + longer) / 2,
        "exact_match_in_distribution": in_distribution,
        "exact_match_out_of_distribution": longer,
        "by_group": {"exact_match": {"1": in_distribution, "2": longer}},
    }
    train = {"train_seconds": 1.0, "steps": 10} | ({"steps_to_95": steps_to_95} if probed else {})
    return {"pe": pe, "seed": seed, "metrics": {"addition": metrics}, "train": train}


def test_compare_records_steps_to_95_per_seed(tmp_path):
    config = RunConfig(pe="rope", probe_steps=5, probe_items=100, arithmetic=SMALL)
    summaries = [
        fake_summary("rope", 0, 30),
        fake_summary("rope", 1, None),
        {"pe": "rope", "seed": 2, "error": "RuntimeError: boom"},
    ]
    table = write_comparison(tmp_path, [config], summaries, wall_seconds=1.0, jobs=1)
    rope = json.loads((tmp_path / "comparison.json").read_text())["pes"]["rope"]
    assert rope["seeds"] == [0, 1, 2] and rope["steps_to_95"] == [30, None, None]
    assert "steps to 95% (per seed)" in table and "| 30, never, failed |" in table
    assert "every 5 steps with >= 95% exact match on 100 held-out" in table


def test_compare_reports_the_spread_over_seeds(tmp_path):
    config = RunConfig(pe="rope", arithmetic=SMALL)
    summaries = [
        fake_summary("rope", 0, None, probed=False, scores=(0.98, 0.30)),
        fake_summary("rope", 1, None, probed=False, scores=(0.94, 0.10)),
        fake_summary("rope", 2, None, probed=False, scores=(1.00, 0.20)),
        *(fake_summary("alibi", seed, None, probed=False) for seed in (0, 1, 2)),
    ]
    table = write_comparison(tmp_path, [config], summaries, wall_seconds=1.0, jobs=1)
    rope = json.loads((tmp_path / "comparison.json").read_text())["pes"]["rope"]["addition"]
    assert rope["in_distribution_per_seed"] == [0.98, 0.94, 1.00]
    assert rope["out_of_distribution_per_seed"] == [0.30, 0.10, 0.20]
    assert rope["by_length_per_seed"] == {"1": [0.98, 0.94, 1.00], "2": [0.30, 0.10, 0.20]}
    assert "in-dist worst seed (%) | longer range (%)" in table
    # overall mean, in-dist mean, longer mean, best seed, worst in-dist seed, longer range
    assert "| rope | 58.7 | 97.3 | 20.0 | 64.0 | 94.0 | 10.0-30.0 |" in table
    markdown = (tmp_path / "comparison.md").read_text()
    assert "## addition: exact match (%) by operand length, min-max over seeds" in markdown
    assert "| rope | 94.0-100.0 | 10.0-30.0 |" in markdown
    # alibi's seeds agree: its min-max row shows one number per length, as its mean row does
    assert markdown.count("| alibi | 90.0 | 10.0 |") == 2


def test_one_seed_has_no_spread_columns(tmp_path):
    summaries = [fake_summary("rope", 0, None, probed=False)]
    table = write_comparison(tmp_path, [RunConfig(arithmetic=SMALL)], summaries, wall_seconds=1.0, jobs=1)
    assert "worst seed" not in table and "min-max" not in (tmp_path / "comparison.md").read_text()


def test_compare_without_probing_has_no_steps_to_95(tmp_path):
    summaries = [fake_summary("rope", 0, None, probed=False)]
    table = write_comparison(tmp_path, [RunConfig(arithmetic=SMALL)], summaries, wall_seconds=1.0, jobs=1)
    assert "steps_to_95" not in json.loads((tmp_path / "comparison.json").read_text())["pes"]["rope"]
    assert "steps to 95%" not in table


PROBED_RUN = ["train", "--pe", "abacus", *TINY_ADDITION, "--max_steps", "5", "--save_steps", "2",
              "--logging_steps", "1", "--eval_samples", "1"]  # fmt: skip


def train_stats(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["train"]


@pytest.mark.integration
def test_probing_leaves_training_unchanged_and_its_history_survives_resume(tmp_path):
    """abacus draws a random offset per training step, so a probe that drew random numbers would change it."""
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    assert main([*PROBED_RUN, "--output_dir", str(plain)]) == 0
    assert main([*PROBED_RUN, "--probe_steps", "2", "--probe_items", "16", "--output_dir", str(probed)]) == 0
    without, with_probe = train_stats(plain), train_stats(probed)
    assert "probe_history" not in without and "steps_to_95" not in without
    assert with_probe["loss_history"] == without["loss_history"] and len(without["loss_history"]) == 5
    weights, reference = final_weights(probed), final_weights(plain)
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    assert [step for step, _ in with_probe["probe_history"]] == [2, 4, 5]
    # Each score is logged beside the loss of its step (every step is logged here), so TensorBoard has it.
    events = EventAccumulator(str(next((probed / "runs").rglob("events.out.tfevents.*")))).Reload()
    logged = [(event.step, event.value) for event in events.Scalars("train/probe_exact_match")]
    assert logged == [(step, pytest.approx(score)) for step, score in with_probe["probe_history"]]
    assert with_probe["steps_to_95"] is None  # five steps learn nothing

    # Resumed from checkpoint-4, the run probes step 5 again and keeps steps 2 and 4 from the checkpoint.
    resumed = Path(shutil.copytree(probed, tmp_path / "resumed"))
    shutil.rmtree(resumed / "checkpoint-5")
    assert main([*PROBED_RUN, "--probe_steps", "2", "--probe_items", "16", "--output_dir", str(resumed),
                 "--resume"]) == 0  # fmt: skip
    again = train_stats(resumed)
    assert again["resumed_from"].endswith("checkpoint-4")
    assert again["probe_history"] == with_probe["probe_history"]
