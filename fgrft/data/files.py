"""Reading JSON / JSONL data files into rows, with errors that say where.

Every loader in this package goes through :func:`read_grouped_rows`, so a
missing file, an empty file or broken JSON gives the same kind of message
wherever it is met. The functions here know nothing about what a row means;
the loaders that turn rows into records validate the fields.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fgrft.errors import DataUnavailable
from fgrft.records import RecordError, read_jsonl

# Shipped inside the package, so it is found from any working directory.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

# (index in its list or line in its file, the row as parsed)
Row = tuple[int, Any]


def bundled_path(name: str) -> Path:
    """The path of a fixture file shipped with the package."""
    path = BUNDLED_DIR / name
    if not path.is_file():
        raise DataUnavailable(f"bundled data file {name!r} is missing from {BUNDLED_DIR}")
    return path


def where(path: str | Path, group: str | None) -> str:
    """How an error names one source inside a file: ``file.json#Source``."""
    return f"{path}#{group}" if group else str(path)


def read_grouped_rows(path: str | Path) -> tuple[dict[str, list[Row]], bool]:
    """Read a data file into rows grouped by the key they were found under.

    Accepted shapes:

    * a JSON object mapping a name to a list of rows (the thesis benchmark
      format ``{"MedQA_USLME_test": [...], ...}``): grouped by that name;
    * a JSON list of rows, or JSONL (one JSON object per line): one group
      with the key ``""`` (the caller names it).

    Returns the groups and whether the file was keyed (the first shape).
    Raises :class:`DataUnavailable` when the file does not exist and
    :class:`RecordError` (naming file, record and field) when it is empty,
    not valid JSON, or not one of these shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataUnavailable(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise RecordError("the file is empty", file=path)
    if path.suffix == ".jsonl":
        return {"": _jsonl_rows(path)}, False
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # A .json file that really holds JSONL: its first line is a whole object.
        if e.msg == "Extra data" and _first_line_is_object(text):
            return {"": _jsonl_rows(path)}, False
        raise RecordError(f"broken JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                          file=path) from None
    if isinstance(data, list):
        if not data:
            raise RecordError("the file holds an empty list", file=path)
        return {"": list(enumerate(data))}, False
    if isinstance(data, dict):
        if not data:
            raise RecordError("the file holds an empty object", file=path)
        groups: dict[str, list[Row]] = {}
        for key, rows in data.items():
            if not isinstance(rows, list):
                raise RecordError(
                    f"expected a list of records under each key ({{source: [items]}}), "
                    f"got {type(rows).__name__}", file=path, field=key)
            if not rows:
                raise RecordError("no records under this key", file=path, field=key)
            groups[key] = list(enumerate(rows))
        return groups, True
    raise RecordError(f"expected a JSON object or list, got {type(data).__name__}", file=path)


def _jsonl_rows(path: Path) -> list[Row]:
    rows = list(read_jsonl(path))
    if not rows:
        raise RecordError("the file holds no records", file=path)
    return rows


def _first_line_is_object(text: str) -> bool:
    first = next(line for line in text.splitlines() if line.strip())
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False
