"""Turning rows (from a file or the hub) into validated :class:`Question` items.

A row has the thesis benchmark fields: ``question`` (str), ``options``
({"A": str, ...}), ``answer_idx`` ("A"...), and optionally ``answer`` (the gold
option text) and ``source``. Anything else (``id``, ``output``, ``sample`` of a
predictions file) is ignored; ids are always recomputed from the content, since
an id is defined as a hash of the question and its options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from fgrft.records import LETTERS, Question, RecordError, fold, text_field

from .files import Row, read_grouped_rows, where


def question_from_row(row: Any, source: str) -> Question:
    """Validate one row and build its Question.

    Raises :class:`RecordError` carrying only the field; callers add the
    file and index (see :func:`located`).
    """
    if not isinstance(row, Mapping):
        raise RecordError(f"expected a JSON object, got {type(row).__name__}")
    question = text_field(row, ("question",))
    options = _options(row)
    answer_idx = row.get("answer_idx")
    if answer_idx is None:
        raise RecordError("missing", field="answer_idx")
    if not isinstance(answer_idx, str):
        raise RecordError(f"expected a letter, got {type(answer_idx).__name__}", field="answer_idx")
    answer_idx = answer_idx.strip()
    if answer_idx not in options:
        raise RecordError(f"gold letter {answer_idx!r} is not among the options {''.join(options)}",
                          field="answer_idx")
    answer = row.get("answer")
    if answer is None:  # prediction files of the thesis carry no answer text
        answer = options[answer_idx]
    elif not isinstance(answer, str):
        raise RecordError(f"expected text, got {type(answer).__name__}", field="answer")
    elif fold(answer) != fold(options[answer_idx]):
        raise RecordError(f"gold text {answer!r} differs from option {answer_idx} "
                          f"({options[answer_idx]!r})", field="answer")
    return Question(source=source, question=question, options=options,
                    answer_idx=answer_idx, answer=answer)


def _options(row: Mapping) -> dict[str, str]:
    """Options as {letter: text} in letter order, lettered A, B, C... without gaps."""
    if "options" not in row or row["options"] is None:
        raise RecordError("missing", field="options")
    raw = row["options"]
    if isinstance(raw, list):  # a bare list of texts: letter it in order
        raw = dict(zip(LETTERS, raw))
    if not isinstance(raw, Mapping):
        raise RecordError(f"expected {{letter: text}}, got {type(raw).__name__}", field="options")
    if len(raw) < 2:
        raise RecordError(f"needs at least 2 options, got {len(raw)}", field="options")
    letters = sorted(raw)
    if letters != list(LETTERS[: len(letters)]):
        raise RecordError(f"option letters must run A, B, C... without gaps, got {letters}",
                          field="options")
    options: dict[str, str] = {}
    for letter in letters:
        text = raw[letter]
        if not isinstance(text, str):
            raise RecordError(f"expected text, got {type(text).__name__}", field=f"options.{letter}")
        if not text.strip():
            raise RecordError("empty text", field=f"options.{letter}")
        options[letter] = text
    return options


def located(error: RecordError, file: str | Path, index: int | None) -> RecordError:
    """The same error with the file and record index filled in."""
    return RecordError(error.reason, file=error.file or file,
                       index=error.index if error.index is not None else index,
                       field=error.field)


def parse_questions(rows: Iterable[Row], source: str, origin: str) -> list[tuple[int, Question]]:
    """Questions with the index each came from; the first bad row raises."""
    out = []
    for index, row in rows:
        try:
            out.append((index, question_from_row(row, source)))
        except RecordError as e:
            raise located(e, origin, index) from None
    return out


def duplicate_error(items: list[tuple[int, Question]], origin: str) -> RecordError | None:
    """An error naming the first record whose id repeats an earlier one, or None."""
    first_seen: dict[str, int] = {}
    for index, q in items:
        if q.id in first_seen:
            return RecordError(
                f"duplicate item: same question and options as record {first_seen[q.id]} "
                f"(id {q.id})", file=origin, index=index, field="question")
        first_seen[q.id] = index
    return None


def drop_duplicates(items: list[tuple[int, Question]]) -> tuple[list[tuple[int, Question]], int]:
    """Keep the first item of each id; return the kept items and how many were dropped."""
    seen: set[str] = set()
    kept = []
    for index, q in items:
        if q.id not in seen:
            seen.add(q.id)
            kept.append((index, q))
    return kept, len(items) - len(kept)


def read_question_file(path: str | Path, *, default_source: str) -> dict[str, list[tuple[int, Question]]]:
    """All sources in a question file: {source: [(index, Question)]}, in file order.

    A keyed (thesis-format) file gives one source per key. A list or JSONL file
    groups its rows by their ``source`` field; rows without one take
    ``default_source``. A predictions file repeats each item once per sample:
    only its first row per item is kept.
    """
    groups, keyed = read_grouped_rows(path)
    if keyed:
        return {key: parse_questions(rows, key, where(path, key)) for key, rows in groups.items()}
    by_source: dict[str, list[Row]] = {}
    for index, row in groups[""]:
        name = row.get("source") if isinstance(row, Mapping) else None
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise RecordError("expected a source name", file=path, index=index, field="source")
        by_source.setdefault(name or default_source, []).append((index, row))
    out = {}
    for name, rows in by_source.items():
        items = parse_questions(rows, name, str(path))
        if any(isinstance(row, Mapping) and "sample" in row for _, row in rows):
            items, _ = drop_duplicates(items)  # one row per sample of the same item
        out[name] = items
    return out


def pick_source(sources: dict[str, list[tuple[int, Question]]], file_key: str | None,
                path: str | Path) -> tuple[str, list[tuple[int, Question]]]:
    """The one source a single-source option reads from a file.

    ``file_key`` picks it; a file holding exactly one source is read whatever
    its key is (the key becomes the source name).
    """
    if file_key and file_key in sources:
        return file_key, sources[file_key]
    if len(sources) == 1:
        return next(iter(sources.items()))
    if file_key:
        raise RecordError(f"no source {file_key!r} in this file; it holds {sorted(sources)}", file=path)
    raise RecordError(f"the file holds several sources {sorted(sources)}: set file_key to pick one",
                      file=path)
