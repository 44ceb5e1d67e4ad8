"""Swap the positional encoding of a pretrained Hugging Face causal LM (GPT-NeoX / Pythia, Llama) in place.

Supported transformers versions: ``TRANSFORMERS_VERSION_RANGE`` (``mathpe.compat``, the same as pyproject.toml).
The swap uses no copy of transformers' modeling files, only these extension points (the private ones through
``mathpe.compat``):

- Module replacement: every attention module's class becomes a thin subclass of the original
  (``SwappedGPTNeoXAttention``, ``SwappedLlamaAttention``) that overrides ``forward`` only, so parameter names,
  state-dict keys and LoRA target modules are unchanged. Its forward projects q, k, v with the original
  weights, ignores the rotary ``position_embeddings`` and 4D mask transformers passes, and runs
  ``mathpe.attention.pe_attention`` (the path mathpe's own decoder uses).
- A forward pre-hook on the base model (``model.gpt_neox`` / ``model.model``) builds the per-forward
  ``PEContext`` with ``build_pe_context`` and passes it as the keyword argument ``mathpe_context``: the base
  model forwards its ``**kwargs`` to every decoder layer and on to attention. A keyword argument (not shared
  state) survives gradient checkpointing, whose recomputation replays the layer with the same arguments.
  The hook creates the KV cache itself, so PE positions and state live on the cache the model then uses, and
  adds additive PEs to the token embeddings.
- The PE is the submodule ``mathpe_pe`` of the base model: ``.to()`` moves it, its parameters are in the
  state dict and trainable, and PEFT's ``modules_to_save=["mathpe_pe"]`` trains and saves it with an adapter.
- The config becomes a subclass of the family's (``SwappedGPTNeoXConfig``, ``SwappedLlamaConfig``) with a model
  type of mathpe's own, ``mathpe_gpt_neox`` / ``mathpe_llama``, and records the PE: a saved swapped model is
  never loaded as the unswapped architecture, and loads with ``trust_remote_code=True`` (``mathpe.remote_code``).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.cache_utils import Cache, DynamicCache
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention
from transformers.models.llama.modeling_llama import LlamaAttention

from mathpe.attention import (
    build_pe_context,
    check_reentrant_checkpointing,
    pe_attention,
    reorder_pe_cache,
    wants_attention_weights,
)
from mathpe.compat import (
    TRANSFORMERS_VERSION_RANGE,
    reassign_class,
    set_beam_search_reorder,
    transformers_version_supported,
)
from mathpe.errors import ConfigError
from mathpe.pe import PEShape, PositionalEncoding, build_pe, list_pes, pe_class, pe_options
from mathpe.remote_code import RemoteCodeConfig

#: Attribute of the base model holding the PE (its state-dict prefix, and PEFT's ``modules_to_save`` name).
PE_MODULE_NAME = "mathpe_pe"
#: Keyword argument carrying the ``PEContext`` from the base model to every attention module.
CONTEXT_KWARG = "mathpe_context"
#: Config attributes recording a swap, so a saved swapped model is reloaded with its PE.
CONFIG_PE_KEY = "mathpe_pe"
CONFIG_OPTIONS_KEY = "mathpe_pe_options"

#: ``rope_parameters`` key -> PE option, for the keys mathpe's rotary PEs understand.
_ROPE_PARAMETER_OPTIONS = {
    "rope_type": "scaling",
    "rope_theta": "base",
    "partial_rotary_factor": "rotary_fraction",
    "factor": "factor",
    "original_max_position_embeddings": "original_max_position",
    "beta_fast": "beta_fast",
    "beta_slow": "beta_slow",
    "attention_factor": "attention_factor",
}


def _attend(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    hidden_states: torch.Tensor,
    cache: Cache | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim) -> (batch, seq, heads * head_dim),
    and the (batch, heads, seq, past + seq) attention probabilities when the context asks for them (else None)."""
    context = kwargs.get(CONTEXT_KWARG)
    if context is None:
        raise RuntimeError(
            f"{type(module).__name__} runs only inside its model's forward, which builds the PE context"
        )
    output, weights = pe_attention(
        query,
        key,
        value,
        context,
        cache=cache,
        layer_idx=module.layer_idx,
        dropout=module.attention_dropout if module.training else 0.0,
        scale=module.scaling,
    )
    return output.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1), weights


class SwappedGPTNeoXAttention(GPTNeoXAttention):
    """GPT-NeoX attention with mathpe's PE; same parameters (``query_key_value``, ``dense``) as the original."""

    def forward(
        self, hidden_states: torch.Tensor, layer_past: Cache | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, seq, hidden) -> ((batch, seq, hidden), probabilities or None), as transformers' attention
        returns them (its ``capture_outputs`` records them); transformers' mask and rotary inputs are ignored."""
        # The fused projection holds [q | k | v] per head: (batch, seq, heads, 3 * head_size), as in transformers.
        qkv = self.query_key_value(hidden_states).view(*hidden_states.shape[:-1], -1, 3 * self.head_size)
        query, key, value = qkv.transpose(1, 2).chunk(3, dim=-1)
        output, weights = _attend(self, query, key, value, hidden_states, layer_past, kwargs)
        return self.dense(output), weights


class SwappedLlamaAttention(LlamaAttention):
    """Llama attention (grouped-query) with mathpe's PE; same parameters (``q/k/v/o_proj``) as the original."""

    def forward(
        self, hidden_states: torch.Tensor, cache: Cache | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, seq, hidden) -> ((batch, seq, hidden), probabilities or None), as transformers' attention
        returns them (its ``capture_outputs`` records them); transformers' mask and rotary inputs are ignored."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        output, weights = _attend(self, query, key, value, hidden_states, cache, kwargs)
        return self.o_proj(output), weights


class UnusedRotary(nn.Module):
    """Stands in for the model's rotary module after a swap: swapped attention ignores its output, so skip it."""

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> None:
        return None


class SwappedGPTNeoXConfig(RemoteCodeConfig, GPTNeoXConfig):
    """The config of a GPT-NeoX model whose PE mathpe swapped (``config.mathpe_pe``)."""

    model_type = "mathpe_gpt_neox"
    remote_model_class = "SwappedGPTNeoXLoader"


class SwappedLlamaConfig(RemoteCodeConfig, LlamaConfig):
    """The config of a Llama model whose PE mathpe swapped (``config.mathpe_pe``)."""

    model_type = "mathpe_llama"
    remote_model_class = "SwappedLlamaLoader"


@dataclass(frozen=True)
class Family:
    """A supported architecture: its causal-LM class, base-model attribute, swapped attention and config,
    LoRA targets."""

    model_class: type[PreTrainedModel]
    base_attr: str
    swapped_attention: type[nn.Module]
    swapped_config: type[PretrainedConfig]
    lora_target_modules: tuple[str, ...]

    @property
    def model_types(self) -> tuple[str, str]:
        """The model type of the architecture and of its swapped checkpoints."""
        return self.model_class.config_class.model_type, self.swapped_config.model_type


FAMILIES = (
    Family(
        GPTNeoXForCausalLM, "gpt_neox", SwappedGPTNeoXAttention, SwappedGPTNeoXConfig, ("query_key_value",)
    ),
    Family(
        LlamaForCausalLM,
        "model",
        SwappedLlamaAttention,
        SwappedLlamaConfig,
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
)
for _family in FAMILIES:
    AutoConfig.register(_family.swapped_config.model_type, _family.swapped_config, exist_ok=True)
SUPPORTED_ARCHITECTURES = tuple(family.model_class.__name__ for family in FAMILIES)


def _unsupported(what: str) -> ConfigError:
    return ConfigError(
        f"cannot swap the positional encoding of {what}; supported architectures: "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def family_of(model: nn.Module) -> Family:
    """The family of a loaded model; a ``ConfigError`` naming the supported architectures otherwise."""
    for family in FAMILIES:
        if isinstance(model, family.model_class):
            return family
    raise _unsupported(type(model).__name__)


def family_of_config(config: PretrainedConfig) -> Family:
    """The family of a model config (before loading weights); a ``ConfigError`` as ``family_of`` otherwise."""
    for family in FAMILIES:
        if config.model_type in family.model_types:
            return family
    raise _unsupported(f"model type {config.model_type!r}")


def lora_target_modules(model: nn.Module) -> list[str]:
    """The family's usual LoRA target modules (``query_key_value`` for GPT-NeoX, ``q/k/v/o_proj`` for Llama)."""
    return list(family_of(model).lora_target_modules)


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def resolve_pe(config: PretrainedConfig, pe: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The PE name and full options to build: the model's rotary settings fill the options the user left out.

    Options a PE takes among ``base``, ``rotary_fraction`` and the scaling options default to the model's
    ``rope_parameters``, so a PE that reproduces the model's ``rope_type`` (``PositionalEncoding.rope_types``)
    reproduces its RoPE. A plain RoPE without options (a PE reproducing ``"default"``) stands for the model's
    own RoPE: on a model whose RoPE is scaled (``rope_type`` linear / dynamic / yarn) it becomes the PE that
    reproduces that scaling.

    Raises:
        ConfigError: a plain RoPE without options on a model whose RoPE mathpe cannot reproduce.
    """
    rope_parameters = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope_parameters.pop("rope_type", "default")
    rope_parameters.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    requested = pe_class(pe).rope_types
    if not options and "default" in requested and rope_type not in requested:
        reproducing = [name for name in list_pes() if rope_type in pe_class(name).rope_types]
        if not reproducing:
            supported = sorted({kind for name in list_pes() for kind in pe_class(name).rope_types})
            raise ConfigError(
                f"this model's rope_type {rope_type!r} has no mathpe equivalent (supported: "
                f"{', '.join(supported)}); pass {pe} options to swap in a plain RoPE"
            )
        pe = reproducing[0]
        unknown = sorted(set(rope_parameters) - set(_ROPE_PARAMETER_OPTIONS))
        if unknown:
            raise ConfigError(f"{pe} cannot reproduce rope_parameters {unknown} of this model")
    if rope_type in pe_class(pe).rope_types:  # a scaling the PE takes as its ``scaling`` option
        rope_parameters["rope_type"] = rope_type
    accepted = pe_options(pe)
    defaults = {
        _ROPE_PARAMETER_OPTIONS[key]: value
        for key, value in rope_parameters.items()
        if _ROPE_PARAMETER_OPTIONS.get(key) in accepted and value is not None
    }
    return pe, {**defaults, **options}


def _active_pe(module: nn.Module) -> PositionalEncoding:
    """The base model's PE, or the active trainable copy when PEFT's ``modules_to_save`` wrapped it."""
    if isinstance(module, PositionalEncoding):
        return module
    # peft's ModulesToSaveWrapper: the original module while adapters are off, else the active adapter's copy.
    if module.disable_adapters or not module.active_adapters:
        return module.original_module
    return module.modules_to_save[module.active_adapters[0]]


@functools.cache
def _forward_parameter_names(model_class: type[nn.Module]) -> tuple[str, ...]:
    """Names of ``forward``'s parameters after ``self``, to turn positional arguments into keywords."""
    return tuple(inspect.signature(model_class.forward).parameters)[1:]


def _before_forward(
    base: PreTrainedModel, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[()], dict[str, Any]]:
    """Forward pre-hook of the base model: build the PE context and pass it on as a keyword argument.

    Rewrites the call to keywords only: ``inputs_embeds`` (batch, seq, hidden) with the additive PE added,
    ``cache`` (created here when caching is on), the positions used, ``attention_mask=None`` (the context holds
    the mask, so transformers skips building its own) and ``mathpe_context``.
    """
    kwargs = {**dict(zip(_forward_parameter_names(type(base)), args, strict=False)), **kwargs}
    if "past_key_values" in kwargs:
        kwargs["cache"] = kwargs.pop("past_key_values")
    input_ids, inputs_embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = base.get_input_embeddings()(input_ids)
    use_cache = kwargs.get("use_cache")
    if use_cache is None:
        use_cache = base.config.use_cache
    # As transformers: no cache while gradient checkpointing recomputes layers.
    checkpointing = base.gradient_checkpointing and base.training and torch.is_grad_enabled()
    if checkpointing:
        use_cache = False
    cache = kwargs.get("cache")
    if use_cache and cache is None:
        cache = DynamicCache(config=base.config)
    context = build_pe_context(
        _active_pe(getattr(base, PE_MODULE_NAME)),
        inputs_embeds=inputs_embeds,
        input_ids=input_ids,
        attention_mask=kwargs.get("attention_mask"),
        position_ids=kwargs.get("position_ids"),
        cache=cache,
        output_attentions=wants_attention_weights(base.config, kwargs),
    )
    if checkpointing:
        check_reentrant_checkpointing(base, context)
    if context.embedding is not None:
        inputs_embeds = inputs_embeds + context.embedding
    kwargs.update(
        input_ids=None,
        inputs_embeds=inputs_embeds,
        attention_mask=None,
        position_ids=context.position_ids,
        cache=cache,
        use_cache=use_cache,
    )
    kwargs[CONTEXT_KWARG] = context
    return (), kwargs


def build_model_pe(
    config: PretrainedConfig, pe: str, options: dict[str, Any]
) -> tuple[str, dict[str, Any], PositionalEncoding]:
    """Resolve (``resolve_pe``) and build the PE for a model config, on the CPU in float32.

    Returns:
        ``(name, options, module)``: the name and full options to record, and the PE module.

    Raises:
        ConfigError: unknown PE or option, or an option value out of range.
    """
    name, options = resolve_pe(config, pe, options)
    shape = PEShape(
        config.num_attention_heads, _head_dim(config), config.hidden_size, config.max_position_embeddings
    )
    module = build_pe(name, shape, **options)
    return name, options, module


def install_pe(
    model: PreTrainedModel, name: str, options: dict[str, Any], module: PositionalEncoding
) -> PreTrainedModel:
    """Make ``module`` (from ``build_model_pe``) the positional encoding of ``model``; see
    ``swap_positional_encoding``."""
    family = family_of(model)
    if not transformers_version_supported():
        warnings.warn(
            f"mathpe.hf supports transformers >={TRANSFORMERS_VERSION_RANGE[0]},<{TRANSFORMERS_VERSION_RANGE[1]}, "
            f"found {transformers.__version__}",
            stacklevel=3,
        )
    base = getattr(model, family.base_attr)
    weight = base.get_input_embeddings().weight
    first_swap = not hasattr(base, PE_MODULE_NAME)
    setattr(base, PE_MODULE_NAME, module.to(device=weight.device, dtype=weight.dtype))
    if first_swap:
        original_attention = family.swapped_attention.__base__
        for submodule in base.modules():
            if isinstance(submodule, original_attention):
                reassign_class(submodule, family.swapped_attention)
        base.rotary_emb = UnusedRotary()
        base.register_forward_pre_hook(_before_forward, with_kwargs=True)
        # generate's beam search reorders the cache through this, PE positions and state included.
        set_beam_search_reorder(model, reorder_pe_cache)
    # A subclass adding no field: see the module docstring.
    reassign_class(model.config, family.swapped_config)
    model.config.mark_mathpe_folder()
    setattr(model.config, CONFIG_PE_KEY, name)
    setattr(model.config, CONFIG_OPTIONS_KEY, options)
    return model


def swap_positional_encoding(model: PreTrainedModel, pe: str, **options: Any) -> PreTrainedModel:
    """Replace, in place, the positional encoding of a GPT-NeoX or Llama causal LM by the mathpe PE ``pe``.

    Pretrained weights are kept; the new PE is built on the model's device and dtype, trainable, and stored
    as ``<base model>.mathpe_pe``. The swap is recorded in ``config.mathpe_pe`` / ``config.mathpe_pe_options``
    (so ``load_model`` re-applies it to a saved model) and in the config's class and model type
    (``SwappedGPTNeoXConfig``, ``mathpe_gpt_neox``); swapping again replaces the PE. ``rope`` without
    options reproduces the model's own RoPE exactly (see ``resolve_pe``).

    Args:
        model: a ``GPTNeoXForCausalLM`` or ``LlamaForCausalLM`` (swap before wrapping it with PEFT).
        pe: a name from ``mathpe.pe.list_pes()``.
        **options: the PE's options (``mathpe.pe.pe_options(pe)``).

    Returns:
        ``model`` itself.

    Raises:
        ConfigError: unsupported architecture, unknown PE or option, or an option value out of range.
    """
    family_of(model)
    return install_pe(model, *build_model_pe(model.config, pe, options))
