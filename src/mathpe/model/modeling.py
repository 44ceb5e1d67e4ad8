"""mathpe's decoder: a small pre-LayerNorm causal LM whose positional encoding is any PE of the zoo.

Read top to bottom: ``MathPEAttention`` -> ``MathPEMLP`` -> ``MathPEBlock`` -> ``MathPEModel`` ->
``MathPEForCausalLM``. The PE is one module owned by ``MathPEModel``; ``build_pe_context`` computes its
tables once per forward and every layer reads them (``mathpe.attention``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mathpe.attention import PEContext, build_pe_context, pe_attention, reorder_pe_cache
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

    def forward(self, hidden_states: torch.Tensor, context: PEContext, cache: Cache | None) -> torch.Tensor:
        """(batch, seq, hidden) -> (batch, seq, hidden)."""
        batch, seq, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, seq, head_dim)
        output = pe_attention(
            query,
            key,
            value,
            context,
            cache=cache,
            layer_idx=self.layer_idx,
            hidden_states=hidden_states,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(output.transpose(1, 2).reshape(batch, seq, -1))


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
        hidden_states = hidden_states + self.dropout(self.attn(self.attn_norm(hidden_states), context, cache))
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class MathPEPreTrainedModel(PreTrainedModel):
    config_class = MathPEConfig
    config: MathPEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MathPEBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the transformer's own layers; PEs keep the initialisation their methods define."""
        if any(
            module is part
            for pe in self.modules()
            if isinstance(pe, PositionalEncoding)
            for part in pe.modules()
        ):
            return
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class MathPEModel(MathPEPreTrainedModel):
    """Token embeddings, the PE, the blocks and a final LayerNorm; returns hidden states."""

    def __init__(self, config: MathPEConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pe = build_pe(
            config.pe,
            num_heads=config.num_heads,
            head_dim=config.head_dim,
            hidden_size=config.hidden_size,
            max_position=config.max_position_embeddings,
            **(config.pe_options or {}),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(MathPEBlock(config, i) for i in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

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
        """input_ids (batch, seq) or inputs_embeds (batch, seq, hidden); attention_mask (batch, past + seq)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
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
        )
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

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

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
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.Tensor) -> Cache:
        return reorder_pe_cache(cache, beam_idx)
