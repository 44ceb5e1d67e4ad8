"""``mathpe export RUN_DIR_OR_CHECKPOINT OUT_DIR``: a standalone model folder from a run or one of its checkpoints.

The folder holds the model (LoRA merged, the PE's trained parameters included), the run's tokenizer and the
generation config, and loads as every folder mathpe writes does (``mathpe.remote_code``): with mathpe's own
loading or with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mathpe.errors import ConfigError
from mathpe.train.config import RunConfig
from mathpe.train.evaluate_run import load_run_config, load_run_tokenizer
from mathpe.train.setup import load_saved_model
from mathpe.train.trainer import PE_STATE_FILE

#: ``--dtype`` choices.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: PEFT's adapter config file, present in a LoRA run's adapter/ and checkpoints.
ADAPTER_CONFIG = "adapter_config.json"


def export_model(source: str | Path, output_dir: str | Path, *, dtype: str | None = None) -> Path:
    """Write the model of ``source`` (a run folder or one of its ``checkpoint-N`` folders) to ``output_dir``.

    Args:
        source: a run folder (its final ``model/`` is exported) or a checkpoint of one.
        output_dir: a new or empty folder.
        dtype: ``float32``, ``bfloat16`` or ``float16`` to cast the weights to; None keeps the model's.

    Raises:
        OSError: ``source`` is not a run folder or checkpoint, or ``output_dir`` is not empty.
        ValueError: unknown ``dtype``; a LoRA checkpoint of a from-scratch decoder.
    """
    source, output_dir = Path(source), Path(output_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ConfigError(f"{output_dir} exists and is not an empty folder; export into a new one")
    is_checkpoint = source.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
    run_dir = source.parent if is_checkpoint else source
    if not source.is_dir():
        raise ConfigError(f"{source} is not a folder; give a run folder or one of its checkpoint-N folders")
    config, raw = load_run_config(run_dir)
    model_dir = run_dir / "model"
    if is_checkpoint and (source / ADAPTER_CONFIG).is_file():
        model = _merged_lora_checkpoint(source, config)
    else:
        model = load_saved_model(source if is_checkpoint else model_dir, config)
    if dtype is not None:
        model.to(DTYPES[dtype])
    model.save_pretrained(output_dir)
    load_run_tokenizer(model_dir, raw.get("tokenizer", "")).save_pretrained(output_dir)
    return output_dir


def _merged_lora_checkpoint(checkpoint: Path, config: RunConfig) -> PreTrainedModel:
    """A LoRA checkpoint's adapter applied to the run's base model (PE swapped), merged.

    The PE's trained parameters come from the adapter (``modules_to_save``) or, for runs that trained the PE in
    place, from the checkpoint's ``mathpe_pe.safetensors`` (names as in the PEFT model's ``named_parameters``).
    """
    from peft import PeftModel

    from mathpe.hf import load_model

    if config.is_preset:
        raise ConfigError(
            f"{checkpoint} is a LoRA checkpoint of a from-scratch decoder, whose base weights are saved nowhere; "
            "export the run folder (its merged model/) instead"
        )
    adapter_config = json.loads((checkpoint / ADAPTER_CONFIG).read_text())
    options = json.loads((checkpoint.parent / "config.json").read_text()).get("resolved_pe_options", {})
    base = load_model(
        adapter_config.get("base_model_name_or_path") or config.model_size, config.pe, **options
    )
    model = PeftModel.from_pretrained(base, checkpoint)
    pe_file = checkpoint / PE_STATE_FILE
    if pe_file.is_file():
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(str(pe_file)).items():
                parameters[name].copy_(value)
    return model.merge_and_unload()
