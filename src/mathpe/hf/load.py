"""Load a pretrained Hugging Face causal LM and swap its positional encoding (``mathpe.hf.swap``)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from mathpe import __version__
from mathpe.compat import cached_file_or_none, class_ignoring_unexpected_keys, reassign_class
from mathpe.errors import ConfigError, ModelLoadError
from mathpe.hf.swap import (
    CONFIG_OPTIONS_KEY,
    CONFIG_PE_KEY,
    PE_MODULE_NAME,
    Family,
    build_model_pe,
    family_of,
    family_of_config,
    install_pe,
)
from mathpe.pe import list_pes


def _load_config(name_or_path: str) -> PretrainedConfig:
    """The model config, or a one-line ``ModelLoadError`` naming ``name_or_path`` when it cannot be read."""
    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ModelLoadError(f"cannot load a model from {name_or_path!r}: no such directory")
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, StrictDataclassError) as error:  # the last: a field of the wrong type
        raise ModelLoadError.from_error(name_or_path, error) from error


def _checkpoint_files(name_or_path: str) -> list[str]:
    """Local paths of the safetensors files of a checkpoint (one file, or the shards of an index)."""
    index = cached_file_or_none(name_or_path, SAFE_WEIGHTS_INDEX_NAME)
    if index is None:
        return [cached_file(name_or_path, SAFE_WEIGHTS_NAME)]
    with open(index, encoding="utf-8") as file:
        shards = sorted(set(json.load(file)["weight_map"].values()))
    return [cached_file(name_or_path, shard) for shard in shards]


def _pe_prefix(family: Family) -> str:
    """State-dict prefix of the swapped PE's weights."""
    return f"{family.base_attr}.{PE_MODULE_NAME}."


def _from_pretrained(family: Family, name_or_path: str, swapped: bool, **kwargs: Any) -> PreTrainedModel:
    """``from_pretrained`` of the family's class; ``swapped``: the checkpoint also holds a PE's weights.

    The unswapped class has no PE, so those keys are loaded after the swap (``_load_pe_weights``). Loading
    goes through a subclass that expects them (``class_ignoring_unexpected_keys``), so transformers does not
    report them as unexpected; the model is then made an instance of the plain class again.
    """
    model_class = family.model_class
    loader = model_class
    if swapped:
        loader = class_ignoring_unexpected_keys(model_class, [f"^{re.escape(_pe_prefix(family))}"])
    try:
        model = loader.from_pretrained(name_or_path, **kwargs)
    except OSError as error:  # missing or unreadable weights
        raise ModelLoadError.from_error(name_or_path, error) from error
    return reassign_class(model, model_class)


def _load_pe_weights(model: PreTrainedModel, name_or_path: str) -> None:
    """Load the swapped PE's saved parameters and buffers from the checkpoint into ``model``."""
    family = family_of(model)
    pe = getattr(getattr(model, family.base_attr), PE_MODULE_NAME)
    names = set(pe.state_dict())
    if not names:
        return
    prefix = _pe_prefix(family)
    state: dict[str, torch.Tensor] = {}
    for path in _checkpoint_files(name_or_path):
        with safe_open(path, framework="pt") as file:
            for key in file.keys():  # noqa: SIM118  (safe_open is not a mapping)
                if key.startswith(prefix) and key[len(prefix) :] in names:
                    state[key[len(prefix) :]] = file.get_tensor(key)
    missing = sorted(names - set(state))
    if missing:
        raise ConfigError(
            f"checkpoint {name_or_path!r} lacks the weights {missing} of its PE {pe.registry_name!r}"
        )
    pe.load_state_dict(state)


def load_model(
    name_or_path: str,
    pe: str | None = None,
    *,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device | None = None,
    **options: Any,
) -> PreTrainedModel:
    """``from_pretrained`` a GPT-NeoX or Llama causal LM, then swap its positional encoding.

    A model saved after a swap records it in its config: with ``pe=None`` (or the same PE and no or the same
    options) the swap is re-applied and the trained PE weights are loaded. Another ``pe`` swaps in a fresh
    one; ``pe=None`` on an unswapped model keeps its own positional encoding.

    Args:
        name_or_path: a hub id or a local directory.
        pe: a name from ``mathpe.pe.list_pes()``, or None.
        dtype: parameter dtype (``"auto"``: the checkpoint's).
        device: where to load the model (``device_map``), or None for the CPU.
        **options: the PE's options (``mathpe.pe.pe_options(pe)``).

    Raises:
        ModelLoadError (an OSError): ``name_or_path`` cannot be read.
        ConfigError (a ValueError): unsupported architecture, unknown PE or option, PE weights missing from the
            checkpoint, or a PE the installed mathpe does not have.
    """
    if options and pe is None:
        raise ConfigError(f"PE options {sorted(options)} given without a pe; pass pe= one of the PE names")
    return _load(name_or_path, _load_config(name_or_path), pe, options, dtype=dtype, device_map=device)


def load_saved_swapped(
    name_or_path: str, config: PretrainedConfig | None = None, **from_pretrained_kwargs: Any
) -> PreTrainedModel:
    """A saved model as ``load_model(name_or_path)`` loads it, with ``from_pretrained``'s own keyword arguments
    (``dtype``, ``device_map``, ``revision``, ...): the entry point of ``AutoModelForCausalLM`` for swapped
    folders (``mathpe.hf.remote``)."""
    return _load(name_or_path, config or _load_config(name_or_path), None, {}, **from_pretrained_kwargs)


def _load(
    name_or_path: str,
    config: PretrainedConfig,
    pe: str | None,
    options: dict[str, Any],
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """``load_model`` once the config is read; ``from_pretrained_kwargs`` go to the family's ``from_pretrained``."""
    family = family_of_config(config)
    saved_pe = getattr(config, CONFIG_PE_KEY, None)
    if saved_pe is None and isinstance(config, family.swapped_config):
        raise ConfigError(
            f"{name_or_path!r}: config.json has model type {config.model_type!r} but no {CONFIG_PE_KEY!r}"
        )
    saved_options = getattr(config, CONFIG_OPTIONS_KEY, None) or {}
    reuse_saved = saved_pe is not None and (pe is None or (pe == saved_pe and options in ({}, saved_options)))
    if reuse_saved:
        if saved_pe not in list_pes():
            raise ConfigError(
                f"{name_or_path!r} was saved with PE {saved_pe!r}, which mathpe {__version__} does not have "
                f"(it has: {', '.join(list_pes())}); install the mathpe version that saved it"
            )
        pe, options = saved_pe, saved_options
    # Built before the weights load, so a bad PE or option fails fast.
    built = build_model_pe(config, pe, options) if pe is not None else None
    model = _from_pretrained(
        family, name_or_path, saved_pe is not None, config=config, **from_pretrained_kwargs
    )
    if built is not None:
        install_pe(model, *built)
    if reuse_saved:
        _load_pe_weights(model, name_or_path)
    return model
