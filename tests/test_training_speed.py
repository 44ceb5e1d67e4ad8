"""The speed settings of a run (``--group_by_length``, ``--torch_compile``) reach the Trainer, and
length-grouped batches still show every training example once per epoch."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from transformers import set_seed

from mathpe.eval.tasks import ArithmeticSettings
from mathpe.train.config import RESUMABLE_SETTINGS, RunConfig, differing_settings
from mathpe.train.run import build_tasks, build_trainer, training_arguments
from mathpe.train.setup import build_model, build_tokenizer


def small_config(tmp_path, **changes) -> RunConfig:
    settings = {
        "pe": "nope",
        "train_samples": 256,
        "eval_samples": 1,
        "batch_size": 16,
        "max_steps": 2,
        "arithmetic": ArithmeticSettings(train_digits=(1, 8), eval_lengths=(1,)),
        "output_dir": str(tmp_path / "run"),
    }
    return RunConfig(**{**settings, **changes})


def test_the_speed_settings_reach_the_training_arguments(tmp_path):
    plain = training_arguments(small_config(tmp_path), progress=False)
    fast = training_arguments(
        small_config(tmp_path, group_by_length=True, torch_compile=True), progress=False
    )
    assert (plain.train_sampling_strategy, plain.torch_compile) == ("random", False)
    assert (fast.train_sampling_strategy, fast.torch_compile) == ("group_by_length", True)
    assert fast.torch_compile_backend == "inductor"


def test_torch_compile_may_change_on_resume_but_group_by_length_may_not(tmp_path):
    """Compiling changes rounding at most (like --threads); grouping by length changes the data order."""
    saved = json.loads(json.dumps(small_config(tmp_path).to_dict()))  # as config.json holds it
    assert "torch_compile" in RESUMABLE_SETTINGS and "group_by_length" not in RESUMABLE_SETTINGS
    assert differing_settings(saved, small_config(tmp_path, torch_compile=True).to_dict()) == []
    assert differing_settings(saved, small_config(tmp_path, group_by_length=True).to_dict()) == [
        "group_by_length: False -> True"
    ]


def one_epoch(config: RunConfig) -> tuple[list[list[dict]], list[dict]]:
    """The batches of features the run's training data loader yields in its first epoch, and its dataset."""
    tokenizer = build_tokenizer(config)
    trainer = build_trainer(
        config, build_model(config, tokenizer), tokenizer, build_tasks(config), progress=False
    )
    batches: list[list[dict]] = []
    collate = trainer.data_collator

    def recording(features):
        batches.append(list(features))
        return collate(features)

    trainer.data_collator = recording
    for _ in trainer.get_train_dataloader():
        pass
    assert sum(map(len, batches)) == len(trainer.train_dataset)
    return batches, trainer.train_dataset


def padding_fraction(batches: list[list[dict]]) -> float:
    lengths = [[len(feature["input_ids"]) for feature in batch] for batch in batches]
    return 1 - sum(map(sum, lengths)) / sum(len(batch) * max(batch) for batch in lengths)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_every_example_is_seen_once_per_epoch(tmp_path, group_by_length):
    batches, dataset = one_epoch(small_config(tmp_path, group_by_length=group_by_length))
    seen = Counter(id(feature) for batch in batches for feature in batch)
    assert seen == Counter(id(feature) for feature in dataset)  # each feature object exactly once


def test_length_grouped_batches_pad_less(tmp_path):
    config = small_config(tmp_path)
    random_order, _ = one_epoch(config)
    grouped, _ = one_epoch(dataclasses.replace(config, group_by_length=True))
    assert padding_fraction(random_order) > 0.2  # 1-8 digit problems differ in length
    assert padding_fraction(grouped) < padding_fraction(random_order) / 2


def logged_losses(config: RunConfig) -> list[float]:
    """The loss of every step of a short run of ``config`` (logged each step)."""
    config = dataclasses.replace(config, logging_steps=1)
    set_seed(config.seed)
    tokenizer = build_tokenizer(config)
    trainer = build_trainer(
        config, build_model(config, tokenizer), tokenizer, build_tasks(config), progress=False
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.slow  # compiling takes a minute or more
def test_a_compiled_run_has_the_eager_runs_losses(tmp_path):
    """--torch_compile changes rounding only: the same losses step by step, to float32 reassociation."""
    eager = logged_losses(small_config(tmp_path, max_steps=4))
    compiled = logged_losses(small_config(tmp_path, max_steps=4, torch_compile=True))
    assert len(eager) == 4
    assert compiled == pytest.approx(eager, rel=1e-4)
