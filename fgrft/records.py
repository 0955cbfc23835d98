"""The hand-off record types shared by every stage.

One type per arrow of the data flow (DESIGN.md):

* :class:`Question`       benchmark / Stage 1 source item
* :class:`TrainingRecord` Stage 1 output, Stage 2 input (``records.jsonl``)
* :class:`Prediction`     Stage 3 output (``predictions.jsonl``)

This module imports nothing else from the package but :mod:`fgrft.errors` so that any module
(and any external tool) can read and write the files without pulling in torch or vLLM.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from fgrft.errors import RecordError

SCHEMA_VERSION = 1
# A fine-tuned checkpoint's lineage (its training run, data, base model), written by
# fgrft.training.lineage into the checkpoint and copied beside an evaluation's predictions.
LINEAGE_FILE = "fgrft.json"
LETTERS = "ABCDEFGHIJKLMN"
# The thesis prompt asks with exactly this line before the question.
QUESTION_PREAMBLE = "Please answer the following multiple-choice question:"

_WS = re.compile(r"\s+")
# An option line as the evaluation prompt renders it: "A. text" (also "A) text", "(A) text").
OPTION_LINE = re.compile(r"^\s*\(?([A-N])[.)]\s+(.*\S)\s*$")


def fold(text: str) -> str:
    """Case- and whitespace-folded text used for ids and exact-match checks."""
    return _WS.sub(" ", text).strip().casefold()


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(fold(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]


def stem_id(question: str) -> str:
    """Stable id of a question stem alone (joins sets that lack parsed options)."""
    return _digest([split_option_lines(question)[0]])


def item_id(question: str, options: Mapping[str, str]) -> str:
    """Stable id of a question stem plus its option texts in letter order."""
    stem = split_option_lines(question)[0]
    return _digest([stem, *(options[k] for k in sorted(options))])


def split_option_lines(text: str) -> tuple[str, dict[str, str]]:
    """Split trailing option lines ("A. text" ...) off a question.

    Returns the stem and the options found. Only a consecutive run of lines
    lettered A, B, C... at the end of the text counts, so a stem that merely
    mentions "A." is left alone.
    """
    lines = text.rstrip().split("\n")
    options: dict[str, str] = {}
    cut = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        m = OPTION_LINE.match(lines[i])
        if not m:
            break
        options[m.group(1)] = m.group(2)
        cut = i
    letters = sorted(options)
    if len(letters) < 2 or "".join(letters) != LETTERS[: len(letters)]:
        return text.strip(), {}
    return "\n".join(lines[:cut]).strip(), {k: options[k] for k in letters}


def format_options(options: Mapping[str, str]) -> str:
    return "\n".join(f"{k}. {options[k]}" for k in sorted(options))


def question_with_options(question: str, options: Mapping[str, str]) -> str:
    """The question and its option lines exactly as the evaluation prompt shows them."""
    return f"{question}\n{format_options(options)}"


@dataclass
class Question:
    """A multiple-choice item; field names follow the thesis benchmark files."""

    source: str
    question: str
    options: dict[str, str]
    answer_idx: str
    answer: str
    id: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.id:
            self.id = item_id(self.question, self.options)

    @property
    def stem_id(self) -> str:
        return stem_id(self.question)

    @property
    def text_with_options(self) -> str:
        return question_with_options(self.question, self.options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Question":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class Gold:
    letter: str
    text: str


@dataclass
class TrainingMeta:
    student_letter: str | None = None
    verifier_verdict: str | None = None
    gate_verdict: str | None = None
    revised: bool = False
    prompt_hashes: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None


@dataclass
class TrainingRecord:
    """One line of ``records.jsonl`` (HuatuoGPT-o1 field names, as the thesis used)."""

    id: str
    source: str
    Question: str
    Complex_CoT: str
    Response: str
    gold: Gold | None = None
    meta: TrainingMeta = field(default_factory=TrainingMeta)
    schema_version: int = SCHEMA_VERSION
    # The response exactly as its source wrote it (naive-CoT records, whose single
    # text is split into Complex_CoT/Response); target_format=raw trains on it.
    raw_response: str | None = None

    @property
    def stem_id(self) -> str:
        return stem_id(self.Question)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.raw_response is None:
            d.pop("raw_response")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainingRecord":
        gold = d.get("gold")
        meta = d.get("meta") or {}
        known = {f.name for f in dataclasses.fields(TrainingMeta)}
        return cls(
            id=d["id"], source=d["source"], Question=d["Question"],
            Complex_CoT=d["Complex_CoT"], Response=d["Response"],
            gold=Gold(**gold) if gold else None,
            meta=TrainingMeta(**{k: v for k, v in meta.items() if k in known}),
            schema_version=d.get("schema_version", SCHEMA_VERSION),
            raw_response=d.get("raw_response"),
        )


@dataclass
class Prediction:
    """One line of ``predictions.jsonl``: one (item, sample) of an evaluation."""

    id: str
    source: str
    sample: int
    question: str
    options: dict[str, str]
    answer_idx: str
    prompt: str
    output: str
    finish_reason: str | None = None
    extracted: str | None = None
    correct: bool = False
    head: str | None = None  # thesis scorer only
    tail: str | None = None  # thesis scorer only
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.head is None and self.tail is None:
            d.pop("head")
            d.pop("tail")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Prediction":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write records (dataclasses with ``to_dict`` or plain dicts) atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict() if hasattr(r, "to_dict") else r, ensure_ascii=False))
            f.write("\n")
            n += 1
    tmp.replace(path)
    return n


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (index, object) per non-blank line; broken JSON names file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"broken JSON on line {i + 1}: {e.msg}", file=path, index=i) from None
            if not isinstance(obj, dict):
                raise RecordError("expected a JSON object", file=path, index=i)
            yield i, obj
