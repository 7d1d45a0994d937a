"""Rows of a data file, each with where it came from, for loaders that report bad input in one line.

`records(source)` yields ``(where, row)`` pairs: ``where`` is ``"<path> line <k>"`` (1-based) for a
JSON Lines file (``.jsonl``, or gzip-compressed ``.jsonl.gz``; blank lines skipped) and
``"<path> row <k>"`` (0-based) for a Hugging Face `datasets` folder saved with ``save_to_disk``
(read with ``datasets.load_from_disk`` when `datasets` is installed; a `DatasetDict` needs `split`).
Every problem raises `BadInput` with one line naming the file, the line, what was expected and
what was found.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlhfscale.errors import BadInput

Source = str | os.PathLike


def records(source: Source, split: str | None = None) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, row) of every record of a .jsonl / .jsonl.gz file or a `datasets` folder; at least one."""
    path = Path(source)
    rows = _dataset_rows(path, split) if path.is_dir() else _jsonl_rows(path)
    n = 0
    for where, row in rows:
        if not isinstance(row, Mapping):
            raise BadInput(f"{where}: expected a JSON object, found {kind(row)}")
        n += 1
        yield where, row
    if n == 0:
        raise BadInput(f"{path}: expected at least one record, found none")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise BadInput(f"{path}: expected a .jsonl file or a datasets folder, found no such file")
    yield from json_lines(path)


def json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, value) of every non-blank line of a JSON Lines file (gzip-compressed when it ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for k, raw in enumerate(f, start=1):
            where = f"{path} line {k}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"{where}: expected UTF-8 text, found invalid bytes") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInput(f"{where}: expected a JSON object, found invalid JSON ({e.msg})") from None


def _dataset_rows(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise BadInput(f"{path}: expected a .jsonl file (reading a datasets folder needs the 'datasets' "
                       "package: pip install 'rlhfscale[data]'), found a directory") from None
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(f"{path}: expected a folder written by save_to_disk, found {_one_line(e)}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            names = ", ".join(repr(s) for s in data) or "none"
            raise BadInput(f"{path}: expected a split name (split={split!r}) among the dataset's splits, found {names}")
        data = data[split]
    for k, row in enumerate(data):
        yield f"{path} row {k}", row


def kind(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def field(where: str, row: Mapping[str, Any], name: str) -> Any:
    """``row[name]``, or BadInput naming the fields the row has."""
    if name not in row:
        found = ", ".join(repr(key) for key in row) or "none"
        raise BadInput(f"{where}: expected a field {name!r}, found fields {found}")
    return row[name]


def text(where: str, row: Mapping[str, Any], name: str) -> str:
    """``row[name]`` as a non-empty string, or BadInput."""
    value = field(where, row, name)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{where}: field {name!r}: expected a non-empty string, found {kind(value)}")
    return value


def shorten(value: str, limit: int = 60) -> str:
    """`value` as a one-line repr, cut to about `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
