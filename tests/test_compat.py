"""``mathpe.compat`` is the one place that touches private transformers/torch behaviour, and the tested
versions it names agree with pyproject.toml, constraints.txt and the Makefile."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

import mathpe
from mathpe import compat
from mathpe.model import MathPEForCausalLM, preset_config

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "mathpe"
#: Private names transformers documents for writing a model or a tokenizer (its modeling files, custom-model
#: guide and ``PreTrainedTokenizer``'s "subclasses implement" list), and the one ``compat`` sets on a class.
DOCUMENTED_HOOKS = {
    "_tokenize",
    "_convert_token_to_id",
    "_convert_id_to_token",
    "_can_set_attn_implementation",  # set by compat.allow_attn_implementation_switch
    "_init_weights",
    "_no_split_modules",
    "_supports_sdpa",
    "_can_record_outputs",
    "_tied_weights_keys",
    "_keys_to_ignore_on_load_unexpected",
    "_backward_cls",  # set on every torch.autograd.Function subclass by its metaclass, not by mathpe
}


def private_uses(source: str) -> list[str]:
    """Private attributes read or written on objects other than ``self``/``cls``, ``__class__`` assignments,
    imports from private modules and private keyword arguments in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.endswith("__")
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            class_swap = node.attr == "__class__" and isinstance(node.ctx, ast.Store)
            if (private and not own) or class_swap:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if any(part.startswith("_") for part in node.module.split(".")[1:]):
                found.append(f"{node.lineno}: from {node.module}")
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            found.append(f"{node.lineno}: {node.arg}=")
    return found


def test_the_scan_finds_each_kind_of_private_use() -> None:
    source = (
        "from torch._C._profiler import _EventType\n"
        "model._reorder_cache = f\n"
        "config.__class__ = Other\n"
        "super()._apply(fn)\n"
        "cached_file(path, name, _raise_exceptions_for_missing_entries=False)\n"
        "self._own = 1\n"
        "super().__init__()\n"
    )
    assert len(private_uses(source)) == 5


def test_private_apis_are_touched_only_in_compat() -> None:
    offenders = {
        str(path.relative_to(SOURCE)): uses
        for path in sorted(SOURCE.rglob("*.py"))
        if path.name != "compat.py" and (uses := private_uses(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_no_private_method_of_transformers_or_torch_is_overridden_outside_compat() -> None:
    overrides = []
    for module_info in pkgutil.walk_packages(mathpe.__path__, "mathpe."):
        if module_info.name in ("mathpe.compat", "mathpe.cli.__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            foreign = [
                base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in ("torch", "transformers")
            ]
            for name in vars(cls):
                private = name.startswith("_") and not name.endswith("__")
                if private and name not in DOCUMENTED_HOOKS and any(name in vars(b) for b in foreign):
                    overrides.append(f"{cls.__qualname__}.{name}")
    assert overrides == [], overrides


def test_pyproject_states_the_tested_minimums_that_constraints_pins() -> None:
    dependencies = {
        Requirement(line).name: Requirement(line).specifier
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version.split("+")[0])
    low, high = compat.TRANSFORMERS_VERSION_RANGE
    assert dependencies["transformers"] == Requirement(f"transformers>={low},<{int(float(high))}").specifier
    for name in ("transformers", "peft", "accelerate"):
        minimum = Version(next(spec.version for spec in dependencies[name] if spec.operator == ">="))
        assert pins[name] in dependencies[name]
        assert minimum.release[:2] == pins[name].release[:2], (
            f"{name}: minimum {minimum}, tested {pins[name]}"
        )
    assert pins["torch"] in dependencies["torch"]  # installing mathpe never pulls another torch
    assert compat.transformers_version_supported(str(pins["transformers"]))
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_transformers_version_range() -> None:
    assert compat.transformers_version_supported()
    assert compat.transformers_version_supported("5.24.0")
    assert not compat.transformers_version_supported("5.23.1")
    assert not compat.transformers_version_supported("6.0.0")


@pytest.mark.parametrize("reentrant", [False, True])
def test_reentrant_checkpointing_is_read_from_the_model(reentrant: bool) -> None:
    model = MathPEForCausalLM(preset_config("tiny", pe="rope", vocab_size=16))
    assert not compat.reentrant_checkpointing(model.model)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    assert compat.reentrant_checkpointing(model.model) is reentrant


def test_float32_state_survives_half_precision_and_follows_the_module() -> None:
    class Table(compat.Float32StateModule):
        float32_buffers = ("frequencies",)
        float32_parameters = ("scale",)

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("frequencies", torch.tensor([1 / 3]))
            self.scale = torch.nn.Parameter(torch.tensor([1 / 3]))
            self.other = torch.nn.Parameter(torch.tensor([1 / 3]))

    table = torch.nn.Sequential(Table()).half()[0]
    assert table.frequencies.dtype == table.scale.dtype == torch.float32
    assert table.frequencies.item() == pytest.approx(1 / 3, abs=1e-8)
    assert table.other.dtype == torch.float16
    assert table.double().scale.dtype == torch.float64  # never below float32, higher is kept
