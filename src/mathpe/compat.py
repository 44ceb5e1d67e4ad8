"""Every place mathpe relies on private or undocumented behaviour of transformers or torch, in one file.

Tested with transformers 5.24.0, torch 2.13.0, peft 0.21.2 and accelerate 1.16.0 (``constraints.txt``, the
reference environment CI installs); pyproject.toml allows ``transformers>=5.24,<6``. When an upgrade breaks
mathpe, the cause is in this file: each function below says what it relies on. Where a public API does the
job, mathpe uses it and no wrapper is here.

Left where they are, because transformers documents them for writing a model or tokenizer (its modeling
files and the custom-model guide use them): the ``PreTrainedModel`` class attributes ``_no_split_modules``,
``_supports_sdpa``, ``_can_record_outputs``, ``_tied_weights_keys`` and the ``_init_weights`` override
(``mathpe.model.modeling``), and ``PreTrainedTokenizer``'s ``_tokenize`` / ``_convert_*`` methods
(``mathpe.data.tokenizer``). ``nn.Module._apply`` is no documented extension point of torch, so the PE base
class gets its override from here (``Float32StateModule``). ``tests/test_compat.py`` fails when another
module reads or overrides a private name of transformers or torch.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from packaging.version import Version
from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

#: The transformers versions mathpe supports, ``minimum <= version < maximum``: the minimum is the version
#: this file was tested on (pyproject.toml states the same range).
TRANSFORMERS_VERSION_RANGE = ("5.24", "6.0")

T = TypeVar("T")
ModelClass = TypeVar("ModelClass", bound=type)


def transformers_version_supported(version: str | None = None) -> bool:
    """True when ``version`` (default: the installed transformers) lies in ``TRANSFORMERS_VERSION_RANGE``."""
    version = version or importlib.metadata.version("transformers")
    minimum, maximum = (Version(bound) for bound in TRANSFORMERS_VERSION_RANGE)
    return minimum <= Version(version) < maximum


# --- Python objects of transformers ------------------------------------------------------------------------


def reassign_class(obj: T, cls: type) -> T:
    """Make ``obj`` an instance of ``cls`` in place (``obj.__class__ = cls``) and return it.

    Relies on ``cls`` being a subclass (or the plain base) of ``type(obj)`` that adds no instance state, and on
    transformers reading behaviour from ``type(obj)`` at call time rather than caching it when the object was
    built: true of attention modules (only ``forward`` changes), of configs (``to_dict``, ``model_type`` are
    looked up on the class) and of ``PreTrainedModel`` in 5.24 (``mathpe.hf.swap``, ``mathpe.hf.load``).
    """
    obj.__class__ = cls
    return obj


def class_ignoring_unexpected_keys(model_class: ModelClass, patterns: Sequence[str]) -> ModelClass:
    """A subclass of ``model_class`` whose ``from_pretrained`` does not report checkpoint keys matching
    ``patterns`` (regular expressions) as unexpected.

    Relies on ``_keys_to_ignore_on_load_unexpected`` (read at load time in 5.24) and on transformers picking
    checkpoint key conversions (GPT-NeoX's ``embed_out`` -> ``lm_head``) by the class's ``__name__`` and
    ``__module__``, which the subclass keeps.
    """
    ignored = [*(model_class._keys_to_ignore_on_load_unexpected or []), *patterns]
    namespace = {"__module__": model_class.__module__, "_keys_to_ignore_on_load_unexpected": ignored}
    return type(model_class.__name__, (model_class,), namespace)


def cached_file_or_none(name_or_path: str, filename: str) -> str | None:
    """``transformers.utils.cached_file`` of ``filename`` in a local folder or hub repository, or None when the
    repository has no such file.

    Relies on the private keyword ``_raise_exceptions_for_missing_entries=False`` (documented in 5.24's
    docstring of ``cached_files``, no public equivalent that also reads local folders).
    """
    from transformers.utils import cached_file

    return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)


def attn_implementation(config: PretrainedConfig) -> str | None:
    """The attention implementation a model was loaded or set with (``"eager"``, ``"sdpa"``, ...).

    Relies on ``config._attn_implementation``, the property every transformers 5.24 modeling file reads to
    pick its attention function (there is no public getter).
    """
    return config._attn_implementation


def allow_attn_implementation_switch(model_class: ModelClass) -> ModelClass:
    """Class decorator: ``set_attn_implementation("eager" | "sdpa")`` works on ``model_class``.

    Overrides the private classmethod ``_can_set_attn_implementation``: transformers 5.24 decides by searching
    the class's source file for its attention interface (``ALL_ATTENTION_FUNCTIONS.get_interface(``), which a
    model that reads ``attn_implementation(config)`` at each forward does not use.
    """
    model_class._can_set_attn_implementation = classmethod(lambda cls: True)
    return model_class


def mark_initialized(module: nn.Module) -> None:
    """Tell ``post_init`` / ``from_pretrained`` that ``module`` and its submodules hold their initial values
    already, so ``_init_weights`` leaves them alone.

    Relies on the ``_is_hf_initialized`` flag that transformers 5.24 sets and reads on modules.
    """
    for part in module.modules():
        part._is_hf_initialized = True


def set_beam_search_reorder(model: PreTrainedModel, reorder: Callable[[Any, torch.Tensor], Any]) -> None:
    """Make beam search reorder ``model``'s cache with ``reorder(cache, beam_index) -> cache``.

    Relies on ``generate`` calling ``model._reorder_cache`` when the model has one (5.24, as for RAG and
    RecurrentGemma); otherwise it calls only ``cache.reorder_cache``, which knows nothing of mathpe's PE
    state kept on the cache.
    """
    model._reorder_cache = reorder


def reentrant_checkpointing(model: nn.Module) -> bool:
    """True when gradient checkpointing on ``model`` (a base model) runs torch's reentrant variant.

    Relies on ``gradient_checkpointing_enable`` / ``activation_checkpointing_enable`` storing
    ``functools.partial(torch.utils.checkpoint.checkpoint, **kwargs)`` as ``model._gradient_checkpointing_func``
    (5.24); transformers exposes no public record of ``use_reentrant``.
    """
    checkpoint = getattr(model, "_gradient_checkpointing_func", None)
    return isinstance(checkpoint, functools.partial) and bool(checkpoint.keywords.get("use_reentrant", False))


# --- Trainer -----------------------------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    """``TrainerHooks``, defined on first use: importing ``transformers.Trainer`` is slow, and the PEs import
    this module too."""
    if name == "TrainerHooks":
        globals()[name] = _trainer_hooks()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _trainer_hooks() -> type:
    from transformers import Trainer

    class TrainerHooks(Trainer):
        """``Trainer`` with its private per-step methods behind named hooks that subclasses override.

        Relies on these private ``Trainer`` methods of transformers 5.24, which ``train`` calls:
        ``_get_train_sampler`` (the training sampler), ``_save_checkpoint`` (a whole ``checkpoint-N`` folder:
        weights, optimizer, scheduler, RNG and trainer state, then rotation), ``_load_from_checkpoint`` (the
        weights of ``--resume``) and ``_issue_warnings_after_load`` (its report of keys the checkpoint lacked).
        """

        def training_sampler(self) -> torch.utils.data.Sampler | None:
            """The sampler of the training set; None: ``Trainer``'s own (random order)."""
            return None

        def save_checkpoint(self, model: nn.Module, trial: Any) -> None:
            """Write ``checkpoint-<global step>``; by default where ``Trainer`` writes it."""
            super()._save_checkpoint(model, trial)

        def checkpoint_loaded(self, checkpoint: str, model: nn.Module | None) -> None:
            """Called after ``--resume`` loaded the weights of ``checkpoint`` into ``model`` (None: the trainer's
            model)."""

        def save_checkpoint_into(self, folder: str, model: nn.Module, trial: Any) -> None:
            """``Trainer``'s ``checkpoint-<global step>`` written into ``folder`` instead of ``args.output_dir``.

            Relies on ``_save_checkpoint`` reading ``args.output_dir`` when called (5.24), which is swapped for
            ``folder`` during the call; the best-checkpoint path it records may then point into ``folder``.
            """
            output_dir = self.args.output_dir
            self.args.output_dir = folder
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.output_dir = output_dir

        def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
            return self.training_sampler() or super()._get_train_sampler(train_dataset)

        def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
            self.save_checkpoint(model, trial)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            self.checkpoint_loaded(resume_from_checkpoint, model)

        def _issue_warnings_after_load(self, load_result: Any) -> None:
            """``Trainer``'s warning about keys the checkpoint lacked, without the tied weights that
            ``save_pretrained`` never writes (a tied output embedding is the input embedding's tensor, loaded
            with it). transformers 5.24 warns about them on every resume of a tied model ("There were missing
            keys in the checkpoint model loaded: ['lm_head.weight']"), as if weights were lost; the model's
            ``all_tied_weights_keys`` (``{tied: source}``, only the pairs actually tied) names them."""
            tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})
            missing = [key for key in load_result.missing_keys if key not in tied]
            super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    TrainerHooks.__qualname__ = "TrainerHooks"
    return TrainerHooks


# --- torch -------------------------------------------------------------------------------------------------


class Float32StateModule(nn.Module):
    """A module whose buffers ``float32_buffers`` stay float32 and parameters ``float32_parameters`` never drop
    below float32 through ``.to(dtype)``, ``.half()``, ``.bfloat16()``; both still follow the device.

    Overrides ``nn.Module._apply``, the private method through which every ``.to()`` / ``.cuda()`` /
    ``.half()`` of a module and its parents passes (torch 2.13); torch has no public hook for "after a cast".
    """

    float32_buffers: tuple[str, ...] = ()
    float32_parameters: tuple[str, ...] = ()

    def _apply(self, fn: Any, recurse: bool = True) -> Float32StateModule:
        kept_buffers = {name: self._buffers[name] for name in self.float32_buffers if name in self._buffers}
        kept_parameters = {name: self._parameters[name].data for name in self.float32_parameters}
        super()._apply(fn, recurse)
        for name, original in kept_buffers.items():
            if self._buffers[name].dtype != torch.float32:
                self._buffers[name] = original.to(device=self._buffers[name].device, dtype=torch.float32)
        for name, original in kept_parameters.items():
            parameter = self._parameters[name]
            if parameter.dtype in (torch.float16, torch.bfloat16):
                parameter.data = original.to(device=parameter.device, dtype=torch.float32)
                if parameter.grad is not None:
                    parameter.grad = parameter.grad.float()
        return self


def profiled_allocations(prof: torch.profiler.profile) -> list[tuple[int, int]]:
    """``(start ns, bytes)`` of every allocation (bytes > 0) and free (bytes < 0) of torch's CPU allocator that
    ``prof`` (run with ``profile_memory=True``) recorded, in time order.

    Relies on ``prof.profiler.kineto_results.experimental_event_tree()`` and ``torch._C._profiler._EventType``
    (torch 2.13): the public ``events()`` fold allocations into the operators that made them and drop their
    order, which a high-water mark needs.
    """
    from torch._C._profiler import _EventType

    return sorted(
        (node.start_time_ns, node.extra_fields.alloc_size)
        for node in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if node.tag == _EventType.Allocation
    )


def _walk(nodes: list) -> Iterator:
    """Every node of the profiler's event tree, depth first."""
    for node in nodes:
        yield node
        yield from _walk(node.children)
