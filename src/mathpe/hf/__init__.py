"""Pretrained Hugging Face models (GPT-NeoX / Pythia, Llama) with their positional encoding swapped.

``swap_positional_encoding(model, pe, **options)`` replaces the PE of a loaded model in place, keeping its
weights; ``load_model(name_or_path, pe, **options)`` loads and swaps. See ``mathpe.hf.swap`` for the design.
"""

from mathpe.hf.load import load_model
from mathpe.hf.swap import (
    PE_MODULE_NAME,
    SUPPORTED_ARCHITECTURES,
    TRANSFORMERS_VERSION_RANGE,
    lora_target_modules,
    swap_positional_encoding,
    transformers_version_supported,
)

__all__ = [
    "PE_MODULE_NAME",
    "SUPPORTED_ARCHITECTURES",
    "TRANSFORMERS_VERSION_RANGE",
    "load_model",
    "lora_target_modules",
    "swap_positional_encoding",
    "transformers_version_supported",
]
