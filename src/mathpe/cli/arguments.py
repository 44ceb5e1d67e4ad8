"""Command-line flags generated from a settings dataclass, and the dataclass built back from parsed flags.

Each field becomes ``--<name>`` (or ``--<metadata["flag"]>``) with the field's default and
``metadata["help"]``; a bool field is a pair of switches (``--name`` and ``--no_name``; the one away from the
default is documented, the other overrides a preset); a field with ``metadata["parse"]`` takes text that
this function turns into the value (comma lists, digit ranges, JSON); a nested dataclass field contributes
its own fields' flags. ``metadata["group"]`` names the ``--help`` section.

Why not transformers' ``HfArgumentParser`` (which ``mathpe pretrain`` and ``swap-study`` use): it calls a
field's annotation on the text, so ``tuple[str, ...]`` from ``"gsm8k,math"`` would be a tuple of characters
and ``dict`` cannot come from JSON; it turns a nested dataclass into one flag; and a parse error of its
arguments is an argparse usage message, where a run's bad setting is a one-line ``ConfigError``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from typing import Any, get_type_hints

from mathpe.errors import ConfigError


def comma_list(text: str) -> tuple[str, ...]:
    """``"gsm8k, math"`` -> ("gsm8k", "math")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def digit_range(text: str) -> tuple[int, int]:
    """``"1-8"`` -> (1, 8); ``"1"`` -> (1, 1)."""
    low, _, high = text.partition("-")
    try:
        low, high = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a digit range like 1-8, got {text!r}") from None
    return low, high


def int_list(text: str) -> tuple[int, ...]:
    """``"1-16,20,24"`` -> (1, 2, ..., 16, 20, 24)."""
    values: list[int] = []
    for part in comma_list(text):
        low, _, high = part.partition("-")
        try:
            values += range(int(low), int(high or low) + 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects integers like 1-16,20,24, got {text!r}") from None
    return tuple(values)


def key_values(text: str) -> dict[str, Any]:
    """``"num_layers=1,dropout=0.1"`` -> {"num_layers": 1, "dropout": 0.1} (values read as JSON, else text),
    the format of transformers' ``--config_overrides``."""
    pairs: dict[str, Any] = {}
    for item in comma_list(text):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise argparse.ArgumentTypeError(
                f"expects key=value pairs like num_layers=1,hidden_size=256, got {text!r}"
            )
        try:
            pairs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key.strip()] = value.strip()
    return pairs


def json_object(text: str) -> dict[str, Any]:
    """``'{"base": 500000}'`` -> {"base": 500000}."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: frozenset[str] = frozenset(),
    groups: dict[str, Any] | None = None,
    group: str | None = None,
) -> None:
    """Add a flag for every field of dataclass ``cls`` (and of its nested dataclasses) except ``skip``.

    ``groups``: the ``--help`` sections made so far, by name; ``group``: the section of fields without one.
    """
    groups = {} if groups is None else groups
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        section = field.metadata.get("group", group)
        if dataclasses.is_dataclass(hints[field.name]):
            add_dataclass_arguments(parser, hints[field.name], skip=skip, groups=groups, group=section)
            continue
        if section is not None and section not in groups:
            groups[section] = parser.add_argument_group(section)
        target = parser if section is None else groups[section]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = field.metadata.get("flag", field.name)
        options: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help")}
        if hints[field.name] is bool:  # both switches, so a preset's value can be overridden either way
            away, back = (f"--no_{flag}", f"--{flag}") if default else (f"--{flag}", f"--no_{flag}")
            if options["help"]:
                options["help"] += f" ({back}: the opposite, e.g. over a preset)"
            target.add_argument(
                away, action="store_false" if default else "store_true", default=default, **options
            )
            target.add_argument(
                back,
                action="store_true" if default else "store_false",
                dest=field.name,
                help=argparse.SUPPRESS,
            )
        else:  # a ``parse`` field's text is converted by ``dataclass_from_args``: one-line ConfigErrors
            kind = str if "parse" in field.metadata else _scalar_type(hints[field.name])
            target.add_argument(f"--{flag}", type=kind, default=default, metavar=flag.upper(), **options)


def dataclass_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """``cls`` built from the flags ``add_dataclass_arguments`` added; ``values`` replace flags by field name."""
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in values:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            values[field.name] = dataclass_from_args(hints[field.name], args)
            continue
        value = copy.deepcopy(getattr(args, field.name))  # argparse gives each parse the same default object
        if "parse" in field.metadata and isinstance(value, str):
            try:
                value = field.metadata["parse"](value)
            except argparse.ArgumentTypeError as error:
                raise ConfigError(f"--{field.metadata.get('flag', field.name)} {error}") from None
        values[field.name] = value
    return cls(**values)


def _scalar_type(annotation: Any) -> type:
    """``int`` for ``int`` and ``int | None``; likewise ``str`` and ``float``."""
    kinds = [kind for kind in getattr(annotation, "__args__", (annotation,)) if kind is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (int, float, str):
        raise TypeError(f"no command-line type for {annotation}: give the field a metadata 'parse' function")
    return kinds[0]
