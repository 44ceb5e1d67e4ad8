"""mathpe's decoder: a small pre-LayerNorm causal LM whose positional encoding is any PE of the zoo.

Read top to bottom: ``MathPEAttention`` -> ``MathPEMLP`` -> ``MathPEBlock`` -> ``MathPEModel`` ->
``MathPEForCausalLM``. The PE is one module owned by ``MathPEModel``; ``build_pe_context`` computes its
tables once per forward and every layer reads them (``mathpe.attention``).

Outputs follow transformers' conventions through its own decorators: ``capture_outputs`` records
``hidden_states`` (the embeddings, then each block's output, the last one after the final norm) and
``attentions`` (each attention module's probabilities) when asked, ``can_return_tuple`` honours
``return_dict=False``, and ``past_key_values=`` is accepted as the deprecated name of ``cache``, as in
transformers' Llama and GPT-NeoX.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from mathpe.attention import (
    PEContext,
    build_pe_context,
    check_reentrant_checkpointing,
    pe_attention,
    reorder_pe_cache,
    wants_attention_weights,
)
from mathpe.compat import allow_attn_implementation_switch, mark_initialized, set_beam_search_reorder
from mathpe.model.configuration import MathPEConfig
from mathpe.pe import PositionalEncoding, build_pe


class MathPEAttention(nn.Module):
    """Multi-head causal self-attention; the PE acts through ``pe_attention``."""

    def __init__(self, config: MathPEConfig, layer_idx: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.dropout = config.dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, context: PEContext, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, seq, hidden) -> (batch, seq, hidden), and the (batch, heads, seq, past + seq) attention
        probabilities when ``context.output_attentions`` (None otherwise)."""
        batch, seq, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, seq, head_dim)
        output, weights = pe_attention(
            query,
            key,
            value,
            context,
            cache=cache,
            layer_idx=self.layer_idx,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(output.transpose(1, 2).reshape(batch, seq, -1)), weights


class MathPEMLP(nn.Module):
    def __init__(self, config: MathPEConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(nn.functional.gelu(self.fc_in(hidden_states))))


class MathPEBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, config: MathPEConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = MathPEAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MathPEMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, hidden_states: torch.Tensor, context: PEContext, cache: Cache | None = None
    ) -> torch.Tensor:
        attention_output, _ = self.attn(self.attn_norm(hidden_states), context, cache)
        hidden_states = hidden_states + self.dropout(attention_output)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


@allow_attn_implementation_switch  # each forward reads attn_implementation(config)
class MathPEPreTrainedModel(PreTrainedModel):
    config_class = MathPEConfig
    config: MathPEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MathPEBlock"]
    _supports_sdpa = True
    _can_record_outputs = {"hidden_states": MathPEBlock, "attentions": MathPEAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the transformer's own layers; a PE (or a submodule of it) gets the tensors its constructor
        makes (``PositionalEncoding.initial_tensors``).

        A PE built normally is marked initialised when built (``MathPEModel``), so only a PE without values (built
        on the meta device, then ``to_empty()``) or with tensors missing from a checkpoint is re-initialised.
        """
        for pe in self.modules():
            if not isinstance(pe, PositionalEncoding):
                continue
            for prefix, part in pe.named_modules():
                if part is module:
                    own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                    initial = pe.initial_tensors() if own else {}
                    for name, tensor in own:
                        init.copy_(tensor, initial[f"{prefix}.{name}" if prefix else name])
                    return
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class MathPEModel(MathPEPreTrainedModel):
    """Token embeddings, the PE, the blocks and a final LayerNorm; returns hidden states."""

    def __init__(self, config: MathPEConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pe = build_pe(config.pe, config.pe_shape, **(config.pe_options or {}))
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MathPEBlock(config, i) for i in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        if not any(tensor.is_meta for tensor in self.pe.state_dict().values()):
            mark_initialized(self.pe)  # built with its method's initialisation: post_init keeps it
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """input_ids (batch, seq) or inputs_embeds (batch, seq, hidden); attention_mask (batch, past + seq).

        ``output_attentions=True`` (or ``attn_implementation="eager"``) computes attention explicitly and
        returns the probabilities; ``output_hidden_states`` and ``return_dict`` as in transformers.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None

        context = build_pe_context(
            self.pe,
            inputs_embeds=inputs_embeds,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            output_attentions=wants_attention_weights(self.config, kwargs),
            randomized_max_position=self.config.randomized_positions,
        )
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            check_reentrant_checkpointing(self, context)
        hidden_states = inputs_embeds if context.embedding is None else inputs_embeds + context.embedding
        hidden_states = self.dropout(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states, context, cache)
        return BaseModelOutputWithPast(last_hidden_state=self.final_norm(hidden_states), cache=cache)


class MathPEForCausalLM(MathPEPreTrainedModel, GenerationMixin):
    """``MathPEModel`` with a language-modelling head; works with ``generate``, ``Trainer`` and PEFT."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MathPEConfig) -> None:
        super().__init__(config)
        self.model = MathPEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        set_beam_search_reorder(self, reorder_pe_cache)  # beam search reorders the PE's cached state too

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits (batch, seq, vocab); with ``labels`` (batch, seq, -100 = ignored) the shifted LM loss."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
