"""Model folders mathpe writes load outside mathpe (``trust_remote_code=True``), are refused without it, and bad
folders fail with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, ByT5Tokenizer, GPTNeoXForCausalLM, PreTrainedModel

from helpers import perturb_parameters
from mathpe.cli.main import main
from mathpe.data.tokenizer import ArithmeticTokenizer
from mathpe.hf import PE_MODULE_NAME, load_model
from mathpe.model import MathPEConfig, MathPEForCausalLM
from mathpe.remote_code import FORMAT_KEY, FORMAT_VERSION, REMOTE_CODE_FILE, NewerFormatError
from test_hf_swap import save_tiny, tiny_config

TESTS = Path(__file__).resolve().parent
INPUT_IDS = [[4, 5, 13, 6, 7, 18, 3, 9], [1, 6, 6, 13, 4, 18, 12, 11]]
#: A PE with trainable weights per folder kind, so wrong or missing PE weights change the logits.
SWAPPED_PES = {"gpt_neox": "alibi", "llama": "fire"}


def decoder(pe: str = "kerple") -> MathPEForCausalLM:
    tokenizer = ArithmeticTokenizer()
    config = MathPEConfig(
        pe=pe,
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        max_position_embeddings=64,
    )
    model = MathPEForCausalLM(config)
    perturb_parameters(model.model.pe)
    return model.eval()


def swapped_model(base: str, pe: str) -> PreTrainedModel:
    model = load_model(base, pe).eval()
    perturb_parameters(model.get_decoder().mathpe_pe)  # trained-looking PE weights
    return model


def write_old_swapped_folder(model: PreTrainedModel, path: Path) -> None:
    """A swapped model saved as mathpe did before format 1: the family's own model type, no auto_map."""
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = config["model_type"].removeprefix("mathpe_")
    for key in ("auto_map", FORMAT_KEY):
        del config[key]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / REMOTE_CODE_FILE).unlink()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved folders: the decoder (with its tokenizer) and swapped GPT-NeoX / Llama models."""
    root = tmp_path_factory.mktemp("folders")
    torch.manual_seed(0)
    decoder().save_pretrained(root / "decoder")
    ArithmeticTokenizer().save_pretrained(root / "decoder")
    for family, pe in SWAPPED_PES.items():
        base = save_tiny(tiny_config(family), root / f"{family}-base")
        swapped_model(base, pe).save_pretrained(root / family)
    return {path.name: path for path in root.iterdir()}


def reference_logits(path: Path) -> torch.Tensor:
    """Logits of INPUT_IDS by mathpe's own loading of ``path``."""
    model = MathPEForCausalLM.from_pretrained(path) if path.name == "decoder" else load_model(str(path))
    with torch.no_grad():
        return model.eval()(torch.tensor(INPUT_IDS)).logits


def load_in_fresh_process(tmp_path: Path, folders: list[Path], tokenizers: list[Path]) -> dict:
    """Run tests/load_outside_mathpe.py on the folders in a new interpreter; its results."""
    job = tmp_path / "job.json"
    output = tmp_path / "result.pt"
    job.write_text(
        json.dumps(
            {
                "folders": [str(path) for path in folders],
                "tokenizers": [str(path) for path in tokenizers],
                "input_ids": INPUT_IDS,
                "output": str(output),
            }
        )
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),  # where transformers copies the folders' code
    }
    completed = subprocess.run(
        [sys.executable, str(TESTS / "load_outside_mathpe.py"), str(job)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,  # transformers asks on stdin when trust_remote_code is not given
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(output, weights_only=False)


def test_saved_folders_load_with_transformers_alone_and_are_refused_without_remote_code(
    tmp_path: Path, folders: dict[str, Path], lora_run: Path
) -> None:
    """The decoder, swapped GPT-NeoX and Llama, and a LoRA run's merged model/, in a process without mathpe."""
    paths = [folders["decoder"], folders["gpt_neox"], folders["llama"], lora_run / "model"]
    result = load_in_fresh_process(tmp_path, paths, [folders["decoder"]])
    assert not result["mathpe_imported_before_loading"]
    for path in paths:
        loaded = result["folders"][str(path)]
        # Never a silent load as the unswapped architecture: transformers asks for trust_remote_code.
        assert loaded["plain"] is not None and "trust_remote_code=True" in loaded["plain"], path
        torch.testing.assert_close(loaded["logits"], reference_logits(path), rtol=0, atol=0)
    assert [result["folders"][str(path)]["model_class"] for path in paths] == [
        "MathPEForCausalLM",
        "GPTNeoXForCausalLM",
        "LlamaForCausalLM",
        "GPTNeoXForCausalLM",
    ]
    tokenizer = result["tokenizers"][str(folders["decoder"])]
    assert tokenizer == {"class": "ArithmeticTokenizer", "ids": ArithmeticTokenizer()("12+34=").input_ids}
    # Where mathpe is not installed: one line that says how to install it.
    assert result["without_mathpe"].startswith("ImportError: ")
    assert "pip install mathpe" in result["without_mathpe"] and "\n" not in result["without_mathpe"]


def test_folders_record_the_format_and_the_remote_code(folders: dict[str, Path]) -> None:
    for kind, model_type in (
        ("decoder", "mathpe"),
        ("gpt_neox", "mathpe_gpt_neox"),
        ("llama", "mathpe_llama"),
    ):
        config = json.loads((folders[kind] / "config.json").read_text())
        assert (config["model_type"], config[FORMAT_KEY]) == (model_type, FORMAT_VERSION)
        assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_mathpe.")
        assert (folders[kind] / REMOTE_CODE_FILE).is_file()
    tokenizer_config = json.loads((folders["decoder"] / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"] == {"AutoTokenizer": ["modeling_mathpe.ArithmeticTokenizer", None]}
    # Unswapped models stay plain transformers folders.
    base = json.loads((folders["gpt_neox-base"] / "config.json").read_text())
    assert base["model_type"] == "gpt_neox" and "auto_map" not in base and FORMAT_KEY not in base
    assert not (folders["gpt_neox-base"] / REMOTE_CODE_FILE).exists()


def test_load_model_reads_folders_saved_before_format_1(tmp_path: Path, folders: dict[str, Path]) -> None:
    model = swapped_model(str(folders["gpt_neox-base"]), "alibi")
    write_old_swapped_folder(model, tmp_path / "old")
    loaded = load_model(str(tmp_path / "old")).eval()
    ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    # Saved again, it is a format-1 folder.
    loaded.save_pretrained(tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (config["model_type"], config[FORMAT_KEY]) == ("mathpe_gpt_neox", FORMAT_VERSION)


def test_a_process_that_loaded_remote_code_still_saves_the_shim(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    """transformers registers remote classes for auto classes after loading them; mathpe's must not then copy
    their own source files into the next folder saved."""
    config = AutoConfig.from_pretrained(folders["decoder"], trust_remote_code=True)
    type(config).register_for_auto_class()
    ArithmeticTokenizer.register_for_auto_class()
    MathPEForCausalLM.from_pretrained(folders["decoder"]).save_pretrained(tmp_path)
    ArithmeticTokenizer().save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.glob("*.py")) == [REMOTE_CODE_FILE]


def rewrite_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("kind", ["decoder", "gpt_neox"])
def test_a_folder_from_a_newer_mathpe_is_a_clear_error(
    tmp_path: Path, folders: dict[str, Path], kind: str
) -> None:
    model = (
        MathPEForCausalLM.from_pretrained(folders[kind])
        if kind == "decoder"
        else load_model(str(folders[kind]))
    )
    model.save_pretrained(tmp_path)
    rewrite_config(tmp_path, **{FORMAT_KEY: FORMAT_VERSION + 1})
    load = MathPEForCausalLM.from_pretrained if kind == "decoder" else load_model
    with pytest.raises(
        (NewerFormatError, OSError), match=f"{FORMAT_KEY}=2, written by a newer mathpe"
    ) as error:
        load(str(tmp_path))
    assert "\n" not in str(error.value)


def test_a_folder_with_an_unknown_pe_is_a_clear_error(tmp_path: Path, folders: dict[str, Path]) -> None:
    load_model(str(folders["gpt_neox"])).save_pretrained(tmp_path / "swapped")
    rewrite_config(tmp_path / "swapped", mathpe_pe="spiral")
    with pytest.raises(ValueError, match=r"saved with PE 'spiral', which mathpe .* does not have") as error:
        load_model(str(tmp_path / "swapped"))
    assert "\n" not in str(error.value)
    MathPEForCausalLM.from_pretrained(folders["decoder"]).save_pretrained(tmp_path / "decoder")
    rewrite_config(tmp_path / "decoder", pe="spiral")
    with pytest.raises(ValueError, match="unknown PE 'spiral'; choose one of") as error:
        MathPEForCausalLM.from_pretrained(tmp_path / "decoder")
    assert "\n" not in str(error.value)


def test_a_swapped_folder_without_its_pe_weights_is_a_clear_error(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    load_model(str(folders["gpt_neox"])).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {key: value for key, value in weights.items() if PE_MODULE_NAME not in key}
    assert len(kept) < len(weights)
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks the weights .* of its PE 'alibi'") as error:
        load_model(str(tmp_path))
    assert "\n" not in str(error.value)


def test_autoconfig_knows_the_swapped_model_types_where_mathpe_is_imported(folders: dict[str, Path]) -> None:
    """Where mathpe is imported, AutoConfig knows the swapped model types (load_model relies on it)."""
    config = AutoConfig.from_pretrained(folders["gpt_neox"])
    assert config.model_type == "mathpe_gpt_neox" and config.mathpe_pe == "alibi"
    assert isinstance(config, GPTNeoXForCausalLM.config_class)


def make_lora_run(root: Path) -> Path:
    """A few LoRA steps of ALiBi (trainable slopes) on a tiny GPT-NeoX with a byte tokenizer, checkpoints
    kept, in ``root/run`` (the base model in ``root/base``)."""
    tokenizer = ByT5Tokenizer()
    base = save_tiny(
        tiny_config(
            "gpt_neox",
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        root / "base",
    )
    tokenizer.save_pretrained(base)
    arguments = [
        "train", "--pe", "alibi", "--model_size", base, "--use_lora", "--datasets", "addition",
        "--train_digits", "1-2", "--eval_lengths", "1-2", "--train_samples", "16", "--eval_samples", "2",
        "--batch_size", "4", "--max_steps", "4", "--save_steps", "2", "--learning_rate", "5e-2",
        "--warmup_steps", "0", "--threads", "1", "--quiet", "--output_dir", str(root / "run"),
    ]  # fmt: skip
    assert main(arguments) == 0
    return root / "run"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_run(tmp_path_factory.mktemp("lora-run"))


def logits_of(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor(INPUT_IDS)).logits


def test_a_lora_run_keeps_its_adapter_in_peft_format_pe_included(lora_run: Path) -> None:
    adapter_config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == [PE_MODULE_NAME]
    settings = json.loads((lora_run / "config.json").read_text())
    base = load_model(settings["model_size"], pe=settings["pe"], **settings["resolved_pe_options"])
    fresh_slopes = [p.detach().clone() for p in base.get_decoder().mathpe_pe.parameters()]
    adapted = PeftModel.from_pretrained(base, lora_run / "adapter")
    merged = load_model(str(lora_run / "model"))
    trained_slopes = list(merged.get_decoder().mathpe_pe.parameters())
    assert not all(
        torch.equal(a, b) for a, b in zip(fresh_slopes, trained_slopes, strict=True)
    )  # the PE trained
    # The adapter carries the trained PE: PEFT's model and the run's merged model.
    active_pe = adapted.base_model.model.gpt_neox.mathpe_pe.modules_to_save["default"]
    for adapter_parameter, merged_parameter in zip(active_pe.parameters(), trained_slopes, strict=True):
        assert torch.equal(adapter_parameter, merged_parameter)
    torch.testing.assert_close(
        logits_of(adapted), logits_of(merged), rtol=1e-4, atol=1e-4
    )  # merging changes float rounding


def exported_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("source", ["run", "checkpoint-2"])
def test_export_writes_the_same_standalone_folder_twice(tmp_path: Path, lora_run: Path, source: str) -> None:
    path = lora_run if source == "run" else lora_run / source
    assert main(["export", str(path), str(tmp_path / "first")]) == 0
    assert main(["export", str(path), str(tmp_path / "second")]) == 0
    first = exported_files(tmp_path / "first")
    assert first == exported_files(tmp_path / "second")
    assert {"config.json", "model.safetensors", "generation_config.json", REMOTE_CODE_FILE} <= set(first)
    assert "tokenizer_config.json" in first and "adapter_config.json" not in first
    exported = load_model(str(tmp_path / "first"))
    if source == "run":
        torch.testing.assert_close(
            logits_of(exported), logits_of(load_model(str(lora_run / "model"))), rtol=0, atol=0
        )
    else:  # the checkpoint's adapter and trained PE, merged: as PEFT computes it unmerged
        settings = json.loads((lora_run / "config.json").read_text())
        base = load_model(settings["model_size"], pe=settings["pe"], **settings["resolved_pe_options"])
        adapted = PeftModel.from_pretrained(base, path)
        torch.testing.assert_close(
            logits_of(exported), logits_of(adapted), rtol=1e-4, atol=1e-4
        )  # merging changes float rounding
        assert not torch.equal(logits_of(exported), logits_of(load_model(str(lora_run / "model"))))


def test_export_casts_to_the_dtype_asked_and_refuses_bad_input(
    tmp_path: Path, lora_run: Path, capsys
) -> None:
    assert main(["export", str(lora_run), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert load_model(str(tmp_path / "bf16")).dtype == torch.bfloat16
    assert main(["export", str(lora_run), str(tmp_path / "bf16")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
