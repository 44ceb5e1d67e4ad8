"""Where math data comes from: local JSON Lines files (errors name the file and line) or the hub."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from mathpe.errors import DataError, error_summary

DATA_DIR_VARIABLE = "MATHPE_DATA"


class MalformedDataError(DataError):
    """A data line that is not a JSON object with the expected string fields."""


class DataUnavailableError(DataError, FileNotFoundError):
    """Data that cannot be had: a missing local file or directory, or an unreachable hub dataset."""


def read_jsonl(path: str | Path, required_fields: Sequence[str]) -> list[dict[str, object]]:
    """Read every non-blank line of ``path`` as a JSON object that has ``required_fields`` as strings.

    Raises ``DataUnavailableError`` for a missing file and ``MalformedDataError`` (naming the file and line)
    for a bad line or a file without any record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"{path}: no such data file")
    records = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                records.append(_parse_line(line, path, line_number, required_fields))
    if not records:
        raise MalformedDataError(
            f"{path}: no examples (the file is empty); expected one JSON object per line"
        )
    return records


def _parse_line(line: str, path: Path, line_number: int, required_fields: Sequence[str]) -> dict[str, object]:
    where = f"{path}:{line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise MalformedDataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise MalformedDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [field for field in required_fields if field not in record]
    if missing:
        raise MalformedDataError(f"{where}: missing field(s) {missing}; required: {list(required_fields)}")
    not_strings = [field for field in required_fields if not isinstance(record[field], str)]
    if not_strings:
        raise MalformedDataError(f"{where}: field(s) {not_strings} must be strings")
    return record


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """``data_dir``, else ``$MATHPE_DATA``, else ``None`` (meaning: the Hugging Face hub).

    Raises ``DataUnavailableError`` when the directory chosen does not exist.
    """
    origin = "data_dir"
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VARIABLE) or None
        origin = f"${DATA_DIR_VARIABLE}"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataUnavailableError(f"{path} (from {origin}): no such data directory")
    return path


def split_file(dataset: str, split: str, data_dir: str | Path | None = None) -> Path | None:
    """The local file of a split, ``{data_dir or $MATHPE_DATA}/{dataset}/{split}.jsonl``; None: the hub."""
    directory = resolve_data_dir(data_dir)
    return None if directory is None else directory / dataset / f"{split}.jsonl"


def split_source(dataset: str, split: str, data_dir: str | Path | None, hub_dataset: str) -> str:
    """Where a split is read from, for messages: its local file, else the hub dataset."""
    return str(split_file(dataset, split, data_dir) or f"hub dataset {hub_dataset!r} ({split})")


def load_hub_rows(dataset: str, config: str | None, split: str) -> list[dict[str, object]]:
    """The rows of a Hugging Face hub dataset split through ``datasets``.

    Any failure (offline, unreachable, unknown name) becomes a one-line ``DataUnavailableError``.
    """
    try:
        import datasets

        rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as error:  # datasets fails in many ways offline; all mean the same to a caller
        raise DataUnavailableError(
            f"hub dataset {dataset!r} (config {config!r}, split {split!r}) unavailable: {error_summary(error)}; "
            f"pass data_dir or set ${DATA_DIR_VARIABLE} to read local JSON Lines files"
        ) from error
    return [dict(row) for row in rows]
