"""Build the model and tokenizer of a run: a preset decoder from scratch or a pretrained model, PE swapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mathpe.data.tokenizer import ArithmeticTokenizer, digit_options, digit_token_ids, index_hint_token_ids
from mathpe.errors import ModelLoadError
from mathpe.model import MathPEForCausalLM, preset_config
from mathpe.train.config import RunConfig

#: LoRA targets in mathpe's decoder: the attention and MLP projections.
MATHPE_LORA_TARGETS = ["qkv_proj", "out_proj", "fc_in", "fc_out"]


def build_tokenizer(config: RunConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer, left-padded for generation.

    Presets use the arithmetic character tokenizer when every dataset is arithmetic, else ByT5's byte-level
    tokenizer (it needs no download). Pretrained models use their own tokenizer; one without a pad token
    pads with EOS.
    """
    if config.is_preset:
        if config.arithmetic_only:
            fuse = config.arithmetic.fuse_hints
            return ArithmeticTokenizer(
                padding_side="left", index_hints=config.arithmetic.index_hints and not fuse, fuse_hints=fuse
            )
        return ByT5Tokenizer(padding_side="left")
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model_size, padding_side="left")
    except (OSError, ValueError) as error:  # transformers' errors for a missing or unreadable model
        raise ModelLoadError.from_error(config.model_size, error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolved_pe_options(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The user's PE options, plus the tokenizer's digit ids (and index-hint ids, with ``--index_hints``) for
    digit-aware PEs that were given none."""
    options = dict(config.pe_options)
    if "digit_token_ids" not in options:
        hints = index_hint_token_ids(tokenizer) if config.arithmetic.index_hints else ()
        options.update(digit_options(config.pe, digit_token_ids(tokenizer), hints))
    return options


def build_model(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The run's model: a fresh preset decoder, or a pretrained model with its PE swapped to ``config.pe``."""
    options = resolved_pe_options(config, tokenizer)
    if config.is_preset:
        model_config = preset_config(
            config.model_size,
            pe=config.pe,
            pe_options=options,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            randomized_positions=config.randomized_positions,
            **config.config_overrides,
        )
        config.check_max_length(model_config.max_position_embeddings)
        return MathPEForCausalLM(model_config)
    from mathpe.hf import load_model

    model = load_model(config.model_size, pe=config.pe, **options)
    config.check_max_length(model.config.max_position_embeddings)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_saved_model(path: str | Path, config: RunConfig) -> PreTrainedModel:
    """A model saved by a run (its final ``model/`` or a checkpoint), PE swap included for pretrained ones."""
    if config.is_preset:
        return MathPEForCausalLM.from_pretrained(path)
    from mathpe.hf import load_model

    return load_model(str(path))


def apply_lora(model: PreTrainedModel, config: RunConfig) -> PreTrainedModel:
    """Wrap ``model`` with PEFT LoRA; the PE's parameters stay trainable.

    Targets: mathpe's attention and MLP projections, or the pretrained family's usual attention modules
    (``query_key_value`` for GPT-NeoX, ``q/k/v/o_proj`` for Llama). A swapped model's PE is one of PEFT's
    ``modules_to_save``, so the adapter PEFT saves holds it; the decoder's forward needs the PE module itself
    (not PEFT's wrapper), so its PE trains in place.
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(model, MathPEForCausalLM):
        targets, modules_to_save = MATHPE_LORA_TARGETS, None
    else:
        from mathpe.hf import PE_MODULE_NAME, lora_target_modules

        targets, modules_to_save = lora_target_modules(model), [PE_MODULE_NAME]
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.05,
            target_modules=targets,
            modules_to_save=modules_to_save,
            task_type="CAUSAL_LM",
        ),
    )
    if modules_to_save is None:
        for parameter in pe_parameters(peft_model):
            parameter.requires_grad_(True)
    return peft_model


def pe_parameters(model: PreTrainedModel) -> list:
    """The parameters of the model's positional encoding (new in a swapped model, trained under LoRA too)."""
    from mathpe.pe import PositionalEncoding

    return [
        p for module in model.modules() if isinstance(module, PositionalEncoding) for p in module.parameters()
    ]
