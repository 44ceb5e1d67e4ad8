"""The models the benchmark times, built from configs with random weights, and their workloads.

The same ``Shape`` builds mathpe's decoder, transformers' ``GPTNeoXForCausalLM`` and an x-transformers
``TransformerWrapper(Decoder(...))``, so compared models do the same matrix products: pre-LayerNorm blocks,
a GELU MLP of 4x the hidden size, fused biased q/k/v projections, SDPA attention, tied embeddings.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedModel

from mathpe.data.tokenizer import digit_options
from mathpe.hf import swap_positional_encoding
from mathpe.model import PRESETS, MathPEConfig, MathPEForCausalLM
from mathpe.pe import pe_options


@dataclass(frozen=True)
class Shape:
    """A decoder's shape; the last three fields only shape GPT-NeoX models (mathpe's decoder ties embeddings)."""

    name: str
    hidden: int
    layers: int
    heads: int
    vocab: int
    rotary_fraction: float = 1.0
    parallel_residual: bool = False
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def preset_shape(preset: str, vocab: int = 32) -> Shape:
    """The shape of mathpe's ``--model_size`` preset (vocabulary of the arithmetic tokenizer's size)."""
    sizes = PRESETS[preset]
    return Shape(preset, sizes["hidden_size"], sizes["num_layers"], sizes["num_heads"], vocab)


#: Random GPT-NeoX models of Pythia's design (partial rotary, parallel residual, untied embeddings): a tiny
#: one, and the shapes of Pythia-160M and Pythia-410M.
NEOX_SHAPES = {
    "tiny": Shape("tiny GPT-NeoX", 128, 4, 4, 1024, 0.25, True, False),
    "pythia-160m": Shape("Pythia-160M", 768, 12, 12, 50304, 0.25, True, False),
    "pythia-410m": Shape("Pythia-410M", 1024, 24, 16, 50304, 0.25, True, False),
}


def bench_pe_options(pe: str, max_position: int) -> dict[str, Any]:
    """Options that switch on all of a PE's work on random tokens (digit ids for digit-aware PEs).

    A number may be as long as the sequence (``max_digits``): greedy decoding of a random model can repeat a
    digit token to the end.
    """
    accepted = pe_options(pe)
    options: dict[str, Any] = digit_options(pe)  # a third of the small vocabulary: digit machinery runs
    if "max_digits" in accepted:
        options["max_digits"] = max_position
    return options


def mathpe_decoder(pe: str, shape: Shape, max_position: int, **options: Any) -> MathPEForCausalLM:
    """mathpe's decoder of ``shape`` with PE ``pe`` (its bench options, overridden by ``options``)."""
    config = MathPEConfig(
        pe=pe,
        pe_options={**bench_pe_options(pe, max_position), **options},
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        max_position_embeddings=max_position,
    )
    return MathPEForCausalLM(config)


def neox(shape: Shape, max_position: int) -> GPTNeoXForCausalLM:
    """transformers' GPT-NeoX of ``shape`` with its own RoPE and SDPA attention."""
    config = GPTNeoXConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=4 * shape.hidden,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": shape.rotary_fraction,
        },
        use_parallel_residual=shape.parallel_residual,
        max_position_embeddings=max_position,
        tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="sdpa",
    )
    return GPTNeoXForCausalLM(config)


def swapped(model: PreTrainedModel, pe: str) -> PreTrainedModel:
    """A copy of ``model`` with its positional encoding swapped to ``pe`` (``mathpe.hf``)."""
    options = bench_pe_options(pe, model.config.max_position_embeddings)
    return swap_positional_encoding(copy.deepcopy(model), pe, **options)


def x_transformers_available() -> bool:
    return importlib.util.find_spec("x_transformers") is not None


#: mathpe PE -> the x-transformers ``Decoder`` option of the same method.
X_TRANSFORMERS_PES = {"rope": "rotary_pos_emb", "alibi": "alibi_pos_bias", "t5_relative": "rel_pos_bias"}


def x_transformer(shape: Shape, max_position: int, pe: str) -> nn.Module:
    """x-transformers' decoder of ``shape`` with its implementation of ``pe`` (a key of ``X_TRANSFORMERS_PES``).

    Attention runs through SDPA (``attn_flash``) except with the T5 bias, which x-transformers does not allow
    there. RoPE rotates whole heads, as mathpe's ``rope`` with ``rotary_fraction=1``.
    """
    from x_transformers import Decoder, TransformerWrapper

    options: dict[str, Any] = {X_TRANSFORMERS_PES[pe]: True, "attn_flash": pe != "t5_relative"}
    if pe == "rope":
        options["rotary_emb_dim"] = shape.head_dim
    return TransformerWrapper(
        num_tokens=shape.vocab,
        max_seq_len=max_position,
        use_abs_pos_emb=False,
        tie_embedding=True,
        attn_layers=Decoder(
            dim=shape.hidden, depth=shape.layers, heads=shape.heads, attn_dim_head=shape.head_dim, **options
        ),
    )


def random_tokens(batch: int, seq: int, vocab: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), device=device)


def train_step(model: nn.Module, input_ids: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of the shifted LM loss, gradients released after (no optimizer step)."""

    def step() -> None:
        if isinstance(model, PreTrainedModel):
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        else:
            logits = model(input_ids)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def generation(model: PreTrainedModel, prompt: torch.Tensor, new_tokens: int) -> Callable[[], None]:
    """Greedy cached ``generate`` of exactly ``new_tokens`` tokens after ``prompt`` (no end-of-sequence token)."""
    attention_mask = torch.ones_like(prompt)

    @torch.no_grad()
    def run() -> None:
        output = model.generate(
            input_ids=prompt,
            attention_mask=attention_mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        if output.shape[1] != prompt.shape[1] + new_tokens:
            raise RuntimeError(
                f"generate stopped after {output.shape[1] - prompt.shape[1]} of {new_tokens} tokens"
            )

    return run
