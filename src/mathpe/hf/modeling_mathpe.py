"""Loads this model folder with the installed mathpe: mathpe saved it, and config.json's ``auto_map`` names
this module, so ``AutoModelForCausalLM`` / ``AutoTokenizer`` ``.from_pretrained(folder, trust_remote_code=True)``
work where mathpe is installed (mathpe's docs/artifacts.md)."""

try:
    from mathpe.hf.remote import (  # noqa: F401  (the classes auto_map names)
        ArithmeticTokenizer,
        MathPEConfig,
        MathPEDecoderLoader,
        SwappedGPTNeoXConfig,
        SwappedGPTNeoXLoader,
        SwappedLlamaConfig,
        SwappedLlamaLoader,
    )
except ModuleNotFoundError as error:
    if error.name is None or error.name.split(".")[0] != "mathpe":
        raise
    raise ImportError(
        "this model folder was saved by mathpe and needs it installed: pip install mathpe "
        "(or pip install -e . in a clone of the mathpe repository)"
    ) from None
