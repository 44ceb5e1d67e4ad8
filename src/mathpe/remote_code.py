"""Model folders that load outside mathpe: the format version and the remote-code shim saved beside the weights.

Every folder mathpe writes for its decoder or a swapped GPT-NeoX / Llama model records ``"mathpe_format"`` and
an ``auto_map`` in config.json (its ``ArithmeticTokenizer`` one in tokenizer_config.json) naming classes of
``modeling_mathpe.py``, a few-line module saved beside the weights that imports them from the installed mathpe.
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` and ``AutoTokenizer`` then load the
folder in any process, and without ``trust_remote_code`` transformers refuses, as the model types (``mathpe``,
``mathpe_gpt_neox``, ``mathpe_llama``) are not its own.

transformers' own mechanism (``register_for_auto_class`` + ``custom_object_save``) copies the file that
defines the class, here a mathpe module with imports of the rest of mathpe: the folder would run a snapshot of
that file against whatever mathpe is installed. The shim, written by ``write_remote_code``, always runs the
installed mathpe, and mathpe's classes do not register for auto classes themselves (``RemoteCodeConfig``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from mathpe.errors import ConfigError

#: config.json key holding the folder's format version, and the version this mathpe writes and reads.
FORMAT_KEY = "mathpe_format"
FORMAT_VERSION = 1
#: The shim's file name in a model folder (the module named in ``auto_map``).
REMOTE_CODE_FILE = "modeling_mathpe.py"
REMOTE_CODE_MODULE = REMOTE_CODE_FILE.removesuffix(".py")
#: The shim's source, a module of mathpe.hf copied as is.
REMOTE_CODE_SOURCE = Path(__file__).parent / "hf" / REMOTE_CODE_FILE
#: tokenizer_config.json's ``auto_map`` for ``ArithmeticTokenizer`` (slow class, no fast class).
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [f"{REMOTE_CODE_MODULE}.ArithmeticTokenizer", None]}


class NewerFormatError(ConfigError):
    """A model folder written by a newer mathpe than the installed one."""


def check_format(version: Any) -> None:
    """Raise ``NewerFormatError`` when a folder's ``mathpe_format`` is newer than this mathpe reads."""
    if version is not None and (not isinstance(version, int) or version > FORMAT_VERSION):
        from mathpe import __version__

        raise NewerFormatError(
            f"this model folder has {FORMAT_KEY}={version!r}, written by a newer mathpe; mathpe {__version__} "
            f"reads format {FORMAT_VERSION} and older: upgrade mathpe to load it"
        )


def write_remote_code(save_directory: str | os.PathLike) -> Path:
    """Copy the shim module into ``save_directory``; returns its path."""
    os.makedirs(save_directory, exist_ok=True)
    target = Path(save_directory) / REMOTE_CODE_FILE
    shutil.copyfile(REMOTE_CODE_SOURCE, target)
    return target


class RemoteCodeConfig:
    """Mixin for the configs of mathpe's model folders (before the transformers config class in the bases).

    Construction checks the format version and records the current one and ``auto_map``; ``save_pretrained``
    also writes the shim module. Subclasses set ``remote_model_class``: the class ``auto_map`` names for
    ``AutoModelForCausalLM``.
    """

    remote_model_class: ClassVar[str]

    def __post_init__(self, **kwargs: Any) -> None:
        check_format(kwargs.get(FORMAT_KEY))
        super().__post_init__(**kwargs)
        self.mark_mathpe_folder()

    def mark_mathpe_folder(self) -> None:
        """Record the format version and the ``auto_map`` naming the shim's classes."""
        setattr(self, FORMAT_KEY, FORMAT_VERSION)
        self.auto_map = {
            "AutoConfig": f"{REMOTE_CODE_MODULE}.{type(self).__name__}",
            "AutoModelForCausalLM": f"{REMOTE_CODE_MODULE}.{self.remote_model_class}",
        }

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """Do nothing: the folder's ``auto_map`` already names the shim. transformers calls this after loading
        remote code, and registering would make the next ``save_pretrained`` copy this class's source file."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """``PreTrainedConfig.save_pretrained``, plus the shim module beside config.json."""
        self.mark_mathpe_folder()
        write_remote_code(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)
