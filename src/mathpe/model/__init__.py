"""mathpe's own decoder, registered with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` as
``model_type="mathpe"``."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from mathpe.model.configuration import PRESETS, MathPEConfig, preset_config
from mathpe.model.modeling import MathPEForCausalLM, MathPEModel

AutoConfig.register("mathpe", MathPEConfig, exist_ok=True)
AutoModel.register(MathPEConfig, MathPEModel, exist_ok=True)
AutoModelForCausalLM.register(MathPEConfig, MathPEForCausalLM, exist_ok=True)

__all__ = ["PRESETS", "MathPEConfig", "MathPEForCausalLM", "MathPEModel", "preset_config"]
