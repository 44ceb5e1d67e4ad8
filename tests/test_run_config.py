"""RunConfig is the one definition of a run's settings: its flags, its checks, its config.json."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, get_type_hints

import pytest
import torch

from mathpe.cli.main import build_parser, main, run_config_from
from mathpe.errors import ConfigError
from mathpe.eval.tasks import ArithmeticSettings
from mathpe.train.config import RunConfig
from mathpe.train.evaluate_run import load_run_config

#: A value other than the default for every field (nested arithmetic ones by name), and the flag text that
#: gives it. ``test_the_table_names_every_setting`` keeps this table complete.
NON_DEFAULT: dict[str, tuple[Any, list[str]]] = {
    "pe": ("abacus", ["--pe", "abacus"]),
    "pe_options": ({"max_offset": 50}, ["--pe_options", '{"max_offset": 50}']),
    "model_size": ("small", ["--model_size", "small"]),
    "config_overrides": (
        {"num_layers": 1, "dropout": 0.1},
        ["--config_overrides", "num_layers=1,dropout=0.1"],
    ),
    "use_lora": (True, ["--use_lora"]),
    "lora_r": (4, ["--lora_r", "4"]),
    "lora_alpha": (32, ["--lora_alpha", "32"]),
    "gradient_checkpointing": (True, ["--gradient_checkpointing"]),
    "fp16": (True, ["--fp16"]),
    "bf16": (True, ["--bf16"]),
    "datasets": (("addition", "multiplication"), ["--datasets", "addition,multiplication"]),
    "data_dir": ("/data/math", ["--data_dir", "/data/math"]),
    "max_length": (128, ["--max_length", "128"]),
    "train_samples": (500, ["--train_samples", "500"]),
    "eval_samples": (7, ["--eval_samples", "7"]),
    "train_digits": ((2, 5), ["--train_digits", "2-5"]),
    "second_digits": ((1, 1), ["--second_digits", "1"]),
    "eval_lengths": ((1, 2, 3, 10), ["--eval_lengths", "1-3,10"]),
    "fmt": ("plain", ["--format", "plain"]),
    "reverse_operands": (False, ["--no_reverse_operands"]),
    "zero_pad": (True, ["--zero_pad"]),
    "eval_per_length": (12, ["--eval_per_length", "12"]),
    "index_hints": (True, ["--index_hints"]),
    "fuse_hints": (True, ["--fuse_hints"]),
    "batch_size": (4, ["--batch_size", "4"]),
    "max_steps": (9, ["--max_steps", "9"]),
    "epochs": (2.5, ["--epochs", "2.5"]),
    "learning_rate": (0.003, ["--learning_rate", "0.003"]),
    "warmup_steps": (3, ["--warmup_steps", "3"]),
    "curriculum_steps": (20, ["--curriculum_steps", "20"]),
    "randomized_positions": (512, ["--randomized_positions", "512"]),
    "seed": (3, ["--seed", "3"]),
    "time_budget": (60.0, ["--time_budget", "60"]),
    "save_steps": (5, ["--save_steps", "5"]),
    "logging_steps": (2, ["--logging_steps", "2"]),
    "threads": (1, ["--threads", "1"]),
    "group_by_length": (True, ["--group_by_length"]),
    "torch_compile": (True, ["--torch_compile"]),
    "eval_batch_size": (16, ["--eval_batch_size", "16"]),
    "eval_offsets": ((0, 10, 20), ["--eval_offsets", "0,10,20"]),
    "select_best": (True, ["--select_best"]),
    "probe_steps": (50, ["--probe_steps", "50"]),
    "probe_items": (64, ["--probe_items", "64"]),
    "experiment_name": ("other", ["--experiment_name", "other"]),
    "output_dir": ("runs/elsewhere", ["--output_dir", "runs/elsewhere"]),
    "resume": (True, ["--resume"]),
    "overwrite": (True, ["--overwrite"]),
}
#: Settings that exclude another one: the two configs of ``non_default_configs`` take one side each.
EXCLUDES = {
    "bf16": "fp16",
    "overwrite": "resume",
    "select_best": "use_lora",
    "group_by_length": "curriculum_steps",
}
#: What a flag needs besides itself to make a valid config.
NEEDS = {
    "pe_options": ["--pe", "abacus"],
    "eval_offsets": ["--pe", "abacus"],
    "fuse_hints": ["--index_hints"],
}
#: A run that ends in seconds, should a check below let it start.
SMALL_RUN = ["--train_samples", "8", "--max_steps", "1", "--eval_samples", "1", "--threads", "1", "--quiet"]
ARITHMETIC = {field.name for field in dataclasses.fields(ArithmeticSettings)}


def setting_names(cls: type = RunConfig) -> list[str]:
    """Every setting of ``cls``, nested dataclasses' fields in their place."""
    hints = get_type_hints(cls)
    names = []
    for field in dataclasses.fields(cls):
        nested = dataclasses.is_dataclass(hints[field.name])
        names += setting_names(hints[field.name]) if nested else [field.name]
    return names


def flat(config: RunConfig) -> dict[str, Any]:
    """``config.to_dict()`` with the arithmetic settings at the top level."""
    settings = config.to_dict()
    return {**settings.pop("arithmetic"), **settings}


def non_default_configs() -> list[tuple[RunConfig, list[str]]]:
    """Two configs that between them give every setting its ``NON_DEFAULT`` value, each with its flags."""
    configs = []
    for left_out in (set(EXCLUDES), set(EXCLUDES.values())):
        chosen = {name: entry for name, entry in NON_DEFAULT.items() if name not in left_out}
        top = {name: value for name, (value, _) in chosen.items() if name not in ARITHMETIC}
        nested = {name: value for name, (value, _) in chosen.items() if name in ARITHMETIC}
        config = RunConfig(**top, arithmetic=ArithmeticSettings(**nested))
        configs.append((config, [text for _, flags in chosen.values() for text in flags]))
    return configs


def test_the_table_names_every_setting():
    assert sorted(NON_DEFAULT) == sorted(setting_names())
    assert set(NON_DEFAULT) <= {name for config, _ in non_default_configs() for name in flat(config)}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_setting_has_a_flag_that_sets_it(name):
    """The setting's flag changes it from the default to the table's value, and changes nothing else."""
    parser = build_parser()
    default = flat(run_config_from(parser.parse_args(["train"]), "rope"))
    value, flags = NON_DEFAULT[name]
    args = parser.parse_args(["train", *NEEDS.get(name, []), *flags])
    settings = flat(run_config_from(args, args.pe))
    changed = {key for key in settings if settings[key] != default[key]}
    needs = parser.parse_args(["train", *NEEDS.get(name, [])])
    needed = flat(run_config_from(needs, needs.pe))
    also = {key for key in needed if needed[key] != default[key]}  # what the needed flags set
    also |= {"reverse_operands"} if name == "fmt" else set()  # plain: as read
    assert changed == {name} | also
    assert settings[name] == value


def test_the_flags_and_the_constructor_make_the_same_config():
    parser = build_parser()
    for config, flags in non_default_configs():
        args = parser.parse_args(["train", *flags])
        assert run_config_from(args, args.pe) == config


def test_a_config_round_trips_through_config_json(tmp_path):
    for config in [RunConfig(), *(config for config, _ in non_default_configs())]:
        (tmp_path / "config.json").write_text(json.dumps({**config.to_dict(), "data_sha256": "0" * 64}))
        assert RunConfig.load(tmp_path / "config.json") == config
        assert load_run_config(tmp_path)[0] == config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pe": "bogus"}, "unknown PE 'bogus'; choose one of: abacus, alibi, "),
        ({"pe": "alibi", "pe_options": {"base": 3}}, "unknown option(s) ['base'] for PE 'alibi'; allowed: "),
        ({"datasets": ()}, "unknown dataset(s) (none)"),
        ({"batch_size": 0}, "--batch_size must be a positive integer, got 0"),
        ({"lora_alpha": 0}, "--lora_alpha must be a positive integer, got 0"),
        ({"max_steps": -1}, "--max_steps must be a positive integer, got -1"),
        ({"epochs": 0}, "--epochs must be positive, got 0"),
        ({"fp16": True, "bf16": True}, "--fp16 and --bf16 exclude each other"),
        ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
        ({"model_size": "EleutherAI/pythia-70m", "randomized_positions": 8}, "--randomized_positions needs"),
        ({"arithmetic": ArithmeticSettings(train_digits=(3, 2))}, "--train_digits 3-2 must satisfy 1 <= min"),
        ({"arithmetic": ArithmeticSettings(second_digits=(0, 1))}, "--second_digits 0-1 must satisfy"),
        ({"arithmetic": ArithmeticSettings(fmt="backwards")}, "--format 'backwards' is not one of"),
        ({"arithmetic": ArithmeticSettings(eval_per_length=0)}, "--eval_per_length must be a positive"),
        ({"probe_steps": 0}, "--probe_steps must be a positive integer, got 0"),
        (
            {"group_by_length": True, "curriculum_steps": 5},
            "--group_by_length and --curriculum_steps exclude each other",
        ),
        ({"probe_items": 513}, "--probe_items 513 is more than the 512 held-out problems per dataset"),
        ({"probe_steps": 10, "datasets": ("gsm8k",)}, "--probe_steps needs arithmetic datasets only"),
        (
            {"model_size": "EleutherAI/pythia-70m", "config_overrides": {"num_layers": 1}},
            "--config_overrides changes mathpe's decoder presets (tiny, small, base); 'EleutherAI/pythia-70m'",
        ),
        (
            {"config_overrides": {"vocab_size": 9}},
            "--config_overrides key 'vocab_size' is not one of: hidden_size",
        ),
        (
            {"config_overrides": {"num_layers": 1.5}},
            "--config_overrides: Validation error for field 'num_layers': TypeError: Field 'num_layers' "
            "expected int, got float (value: 1.5)",
        ),
        ({"config_overrides": {"num_layers": True}}, "'num_layers' expected int, got bool (value: True)"),
        (
            {"config_overrides": {"tie_word_embeddings": 0}},
            "'tie_word_embeddings' expected bool, got int (value: 0)",
        ),
        (
            {"config_overrides": {"num_heads": 0}},
            "field 'num_heads': ValueError: Value must be a positive integer, got 0",
        ),
        ({"config_overrides": {"dropout": 1}}, "field 'dropout': ValueError: Value must be greater or equal"),
        (
            {"config_overrides": {"layer_norm_eps": -1e-5}},
            "'layer_norm_eps': ValueError: Value must be greater",
        ),
        (
            {"config_overrides": {"num_heads": 3}},
            "--config_overrides: hidden_size=128 is not divisible by num_heads=3",
        ),
    ],
)
def test_construction_rejects_a_bad_setting(settings, message):
    with pytest.raises(ConfigError) as error:
        RunConfig(**settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_config_overrides_shape_the_preset_model():
    from mathpe.train.setup import build_model, build_tokenizer

    config = RunConfig(config_overrides={"num_layers": 1, "hidden_size": 64, "num_heads": 2})
    model = build_model(config, build_tokenizer(config))
    assert (model.config.num_layers, model.config.hidden_size, model.config.num_heads) == (1, 64, 2)
    assert len(model.model.layers) == 1 and model.config.intermediate_size == 256
    assert model.config.max_position_embeddings == 256  # the rest of the preset stays


def test_replace_checks_again():
    with pytest.raises(ConfigError, match="--eval_offsets needs a PE trained with a random offset"):
        dataclasses.replace(RunConfig(), eval_offsets=(0, 1))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train_digits", "one-eight"], "--train_digits expects a digit range like 1-8, got 'one-eight'"),
        (["--eval_lengths", "1-x"], "--eval_lengths expects integers like 1-16,20,24, got '1-x'"),
        (["--pe_options", "[1, 2]"], "--pe_options must be a JSON object, got '[1, 2]'"),
        (
            ["--config_overrides", "num_layers"],
            "--config_overrides expects key=value pairs like num_layers=1,hidden_size=256, got 'num_layers'",
        ),
    ],
)
def test_unreadable_flag_text_is_a_one_line_error(flags, message, tmp_path, capsys):
    assert main(["train", *flags, "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"mathpe: error: {message}"


def test_an_fp16_config_loads_without_cuda_but_a_run_refuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = RunConfig(fp16=True, output_dir=str(tmp_path / "run"))  # a GPU run's settings
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert RunConfig.load(path) == config  # mathpe eval reads it on a CPU machine
    with pytest.raises(ConfigError, match="--fp16 needs a CUDA GPU"):
        config.check_environment()
    assert main(["train", "--fp16", *SMALL_RUN, "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        "mathpe: error: --fp16 needs a CUDA GPU (none is visible); use --bf16 or fp32 on CPU"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_environment_checks_wait_for_the_run(tmp_path):
    config = RunConfig(data_dir=str(tmp_path / "gone"), model_size="./no/such/model")
    with pytest.raises(ConfigError, match=r"--data_dir '.*gone' is not a directory"):
        config.check_environment()
    with pytest.raises(ConfigError, match=r"--model_size '\./no/such/model' is neither a preset"):
        dataclasses.replace(config, data_dir=None).check_environment()


def test_compare_checks_the_environment_before_any_run(tmp_path, capsys):
    code = main(["compare", "--pe", "rope,alibi", "--data_dir", str(tmp_path / "gone"), "--datasets", "gsm8k",
                 *SMALL_RUN, "--jobs", "1", "--output_dir", str(tmp_path / "cmp")])  # fmt: skip
    assert code == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()
