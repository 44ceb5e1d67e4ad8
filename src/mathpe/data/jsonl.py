"""A JSON Lines reader whose errors name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


class MalformedDataError(ValueError):
    """A data line that is not a JSON object with the expected string fields."""


class DataUnavailableError(FileNotFoundError):
    """Data that cannot be had: a missing local file or directory, or an unreachable hub dataset."""


def read_jsonl(path: str | Path, required_fields: Sequence[str]) -> list[dict[str, object]]:
    """Read every non-blank line of ``path`` as a JSON object that has ``required_fields`` as strings."""
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"{path}: no such data file")
    records = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if line.strip():
                records.append(_parse_line(line, path, line_number, required_fields))
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
