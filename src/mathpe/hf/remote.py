"""The classes a mathpe model folder's ``auto_map`` names, re-exported by its shim ``modeling_mathpe.py``.

``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` calls ``from_pretrained`` of the class
``auto_map`` names. Those classes are loaders: their ``from_pretrained`` returns what mathpe's own loading
returns (``MathPEForCausalLM.from_pretrained``, ``mathpe.hf.load_model``), an instance of the plain class, so the
model behaves, and saves, exactly as one loaded by mathpe. The loaders are not registered with
``AutoModelForCausalLM``: ``from_config`` would build them.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import GPTNeoXForCausalLM, LlamaForCausalLM, PreTrainedModel

from mathpe.data.tokenizer import ArithmeticTokenizer
from mathpe.hf.load import load_saved_swapped
from mathpe.hf.swap import SwappedGPTNeoXConfig, SwappedLlamaConfig
from mathpe.model import MathPEConfig, MathPEForCausalLM

__all__ = [
    "ArithmeticTokenizer",
    "MathPEConfig",
    "MathPEDecoderLoader",
    "SwappedGPTNeoXConfig",
    "SwappedGPTNeoXLoader",
    "SwappedLlamaConfig",
    "SwappedLlamaLoader",
]


class MathPEDecoderLoader(MathPEForCausalLM):
    """Loads a saved mathpe decoder: ``from_pretrained`` returns a ``MathPEForCausalLM``."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> PreTrainedModel:
        return MathPEForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class _SwappedLoader:
    """``from_pretrained`` of a saved swapped model: ``mathpe.hf.load_model``'s loading, PE weights included."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> PreTrainedModel:
        if args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments, got {args}")
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("adapter_kwargs", None)
        return load_saved_swapped(str(pretrained_model_name_or_path), **kwargs)


class SwappedGPTNeoXLoader(_SwappedLoader, GPTNeoXForCausalLM):
    config_class = SwappedGPTNeoXConfig


class SwappedLlamaLoader(_SwappedLoader, LlamaForCausalLM):
    config_class = SwappedLlamaConfig
