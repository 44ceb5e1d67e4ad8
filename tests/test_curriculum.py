"""The length curriculum: its schedule, its order per epoch, and the Trainer drawing batches from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mathpe.cli.main import main
from mathpe.data import ArithmeticTokenizer, PaddingCollator, encode_example
from mathpe.eval.tasks import ArithmeticSettings, build_task
from mathpe.model import MathPEForCausalLM, preset_config
from mathpe.train.config import RunConfig
from mathpe.train.curriculum import LengthCurriculumSampler
from mathpe.train.run import training_arguments
from mathpe.train.trainer import MathPETrainer

#: 800 examples, levels 1..8 in a shuffled order, a hundred of each.
LEVELS = [1 + (index * 37) % 8 for index in range(800)]


def steps_of(order: list[int], batch: int) -> list[list[int]]:
    return [order[start : start + batch] for start in range(0, len(order), batch)]


def test_levels_join_one_by_one_and_the_highest_at_the_last_curriculum_step():
    sampler = LengthCurriculumSampler(LEVELS, curriculum_steps=70, global_batch_size=4)
    ceilings = sampler.ceiling(torch.arange(80)).tolist()
    assert ceilings[0] == 1 and ceilings[9] == 1 and ceilings[10] == 2
    assert ceilings[69] == 7 and ceilings[70:] == [8] * 10


def test_every_curriculum_batch_stays_under_its_ceiling_and_reaches_it():
    sampler = LengthCurriculumSampler(LEVELS, curriculum_steps=70, global_batch_size=4)
    order = list(sampler)
    assert len(order) == len(LEVELS)
    batches = steps_of(order, 4)
    for step, batch in enumerate(batches[:70]):
        levels = [LEVELS[index] for index in batch]
        assert max(levels) <= sampler.ceiling(torch.tensor(step)).item(), (step, levels)
    first_ten = [LEVELS[index] for batch in batches[:10] for index in batch]
    assert set(first_ten) == {1}
    last_ten = [LEVELS[index] for batch in batches[60:70] for index in batch]
    assert max(last_ten) == 7 and min(last_ten) < 7  # drawn from all levels up to the ceiling


def test_after_the_curriculum_an_epoch_is_a_permutation_that_changes_with_the_epoch():
    sampler = LengthCurriculumSampler(LEVELS, curriculum_steps=10, global_batch_size=4, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(len(LEVELS)))
    assert first == list(sampler)  # the order depends on (seed, epoch) only: resume replays it
    sampler.set_epoch(2)
    assert list(sampler) != first
    assert list(LengthCurriculumSampler(LEVELS, 10, 4, seed=4)) != list(
        LengthCurriculumSampler(LEVELS, 10, 4)
    )


def test_a_curriculum_longer_than_an_epoch_continues_into_the_next():
    sampler = LengthCurriculumSampler(LEVELS, curriculum_steps=300, global_batch_size=4)  # 1,200 draws
    sampler.set_epoch(1)
    order = list(sampler)
    steps_in_epoch_one = steps_of(order[:400], 4)  # steps 200..299 of the curriculum
    for offset, batch in enumerate(steps_in_epoch_one):
        ceiling = sampler.ceiling(torch.tensor(200 + offset)).item()
        assert max(LEVELS[index] for index in batch) <= ceiling
    assert sorted(order[400:]) != list(range(400, 800))  # the rest is the shuffled permutation's tail


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([], 5, 4), "needs at least one training example"),
        (([1, 2], 0, 4), "curriculum_steps=0 and global_batch_size=4 must be >= 1"),
        (([1, 2], 5, 0), "global_batch_size=0 must be >= 1"),
    ],
)
def test_bad_sampler_arguments_name_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        LengthCurriculumSampler(*arguments)


def curriculum_trainer(
    tmp_path: Path, curriculum_steps: int, levels: list[int] | None = None
) -> MathPETrainer:
    config = RunConfig(
        batch_size=16, max_steps=10, output_dir=str(tmp_path), curriculum_steps=curriculum_steps
    )
    task = build_task(
        "addition",
        seed=0,
        train_samples=256,
        eval_samples=1,
        arithmetic=ArithmeticSettings(train_digits=(1, 6), eval_lengths=(1,)),
    )
    tokenizer = ArithmeticTokenizer()
    model = MathPEForCausalLM(
        preset_config("tiny", pe="nope", vocab_size=len(tokenizer), hidden_size=32, num_layers=1, num_heads=2)
    )
    return MathPETrainer(
        model=model,
        args=training_arguments(config, progress=False),
        train_dataset=[encode_example(tokenizer, prompt, answer) for prompt, answer in task.train_pairs],
        data_collator=PaddingCollator(tokenizer.pad_token_id, padding_side="right"),
        train_levels=task.train_levels if levels is None else levels,
        curriculum_steps=curriculum_steps,
    )


def test_the_trainer_draws_its_first_batches_from_the_shortest_problems(tmp_path):
    trainer = curriculum_trainer(tmp_path, curriculum_steps=50)
    tokenizer = ArithmeticTokenizer()
    first_batch = next(iter(trainer.get_train_dataloader()))
    prompts = [tokenizer.decode(row[row != tokenizer.pad_token_id]) for row in first_batch["input_ids"]]
    operands = [prompt.split("=")[0].replace("+", " ").split() for prompt in prompts]
    assert len(prompts) == 16
    assert all(len(number) == 1 for pair in operands for number in pair), prompts


def test_the_trainer_without_a_curriculum_keeps_the_random_sampler(tmp_path):
    trainer = curriculum_trainer(tmp_path, curriculum_steps=0)
    assert isinstance(trainer._get_train_sampler(), torch.utils.data.RandomSampler)


def test_a_curriculum_without_one_level_per_example_is_refused(tmp_path):
    with pytest.raises(ValueError, match="one level per training example: 3 levels for 256 examples"):
        curriculum_trainer(tmp_path, curriculum_steps=5, levels=[1, 2, 3])


TINY_CURRICULUM = [
    "train", "--pe", "rope", "--model_size", "tiny", "--datasets", "addition", "--train_digits", "1-4",
    "--eval_lengths", "1,5", "--train_samples", "200", "--eval_samples", "2", "--batch_size", "8",
    "--threads", "1", "--quiet", "--curriculum_steps", "6", "--max_steps", "8", "--save_steps", "4",
]  # fmt: skip


def test_a_resumed_curriculum_run_ends_with_the_uninterrupted_runs_weights(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*TINY_CURRICULUM, "--output_dir", str(straight)]) == 0
    assert json.loads((straight / "config.json").read_text())["curriculum_steps"] == 6
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    assert main([*TINY_CURRICULUM, "--output_dir", str(resumed), "--resume"]) == 0
    expected = load_file(str(straight / "model" / "model.safetensors"))
    for name, tensor in load_file(str(resumed / "model" / "model.safetensors")).items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)
