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
from typing import Any, Iterable, Iterator, Mapping, Sequence

from fgrft.errors import RecordError

SCHEMA_VERSION = 1
# A fine-tuned checkpoint's lineage (its training run, data, base model), written by
# fgrft.training.lineage into the checkpoint and copied beside an evaluation's predictions.
LINEAGE_FILE = "fgrft.json"
# Run-directory files that more than one module reads or writes (CONTRACTS.md).
CONFIG_FILE = "config.yaml"                # every stage: the resolved config, secrets masked
SUMMARY_FILE = "summary.json"              # generate, train (its presence marks a finished train job)
RECORDS_FILE = "records.jsonl"             # generate: the kept TrainingRecords, Stage 2's input
QUESTIONS_FILE = "questions.jsonl"         # generate: one outcome per question
PREDICTIONS_FILE = "predictions.jsonl"     # evaluate: one Prediction per (item, sample)
METRICS_FILE = "metrics.json"              # evaluate
SCORER_AUDIT_FILE = "scorer_audit.jsonl"   # evaluate
DRY_RUN_FILE = "dry_run.json"              # generate, evaluate: the plan and its price
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


# --- reading records.jsonl (the Stage 1 -> Stage 2 hand-off) -----------------------------

# The reasoning and final-answer fields: this project's names first, then the thesis's spellings.
COT_FIELDS = ("Complex_CoT", "guided_solution", "Guided_Solution")
RESPONSE_FIELDS = ("Response", "final_response", "Final_Response")


def text_field(row: Mapping, names: Sequence[str], hint: str = "") -> str:
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            if not isinstance(value, str):
                raise RecordError(f"expected text, got {type(value).__name__}", field=name)
            if not value.strip():
                raise RecordError("empty text", field=name)
            return value
    aliases = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise RecordError(f"missing{aliases}{hint}", field=names[0])


def training_record_from_row(row: Mapping[str, Any], default_source: str = "") -> TrainingRecord:
    """One ``records.jsonl`` line (Stage 1's output), or an FGRFT-shaped row in the thesis's alias
    spellings (:data:`COT_FIELDS`, :data:`RESPONSE_FIELDS`); errors name the field."""
    naive_hint = ("; this looks like a naive-CoT record (question/response): set data.format=naive_cot"
                  if "response" in row and not any(k in row for k in COT_FIELDS) else "")
    question = text_field(row, ("Question", "question"))
    cot = text_field(row, COT_FIELDS, naive_hint)
    response = text_field(row, RESPONSE_FIELDS)
    stem, options = split_option_lines(question)
    record_id = row.get("id") or item_id(stem, options)
    if not isinstance(record_id, str):
        raise RecordError(f"expected text, got {type(record_id).__name__}", field="id")
    source = row.get("source") or default_source
    if not isinstance(source, str):
        raise RecordError(f"expected text, got {type(source).__name__}", field="source")
    raw = row.get("raw_response")
    if raw is not None and not isinstance(raw, str):
        raise RecordError(f"expected text, got {type(raw).__name__}", field="raw_response")
    return TrainingRecord(id=record_id, source=source, Question=question, Complex_CoT=cot,
                          Response=response, gold=gold_field(row.get("gold"), options),
                          meta=_meta(row.get("meta")),
                          schema_version=row.get("schema_version", SCHEMA_VERSION), raw_response=raw)


def gold_field(value: Any, options: Mapping[str, str]) -> Gold | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RecordError(f"expected {{letter, text}}, got {type(value).__name__}", field="gold")
    letter, text = value.get("letter"), value.get("text")
    if not isinstance(letter, str) or not letter.strip():
        raise RecordError("expected a letter", field="gold.letter")
    if not isinstance(text, str):
        raise RecordError("expected text", field="gold.text")
    letter = letter.strip()
    if options and letter not in options:
        raise RecordError(f"gold letter {letter!r} is not among the question's options "
                          f"{''.join(options)}", field="gold.letter")
    if options and fold(text) != fold(options[letter]):
        raise RecordError(f"gold text {text!r} differs from option {letter} ({options[letter]!r})",
                          field="gold.text")
    return Gold(letter=letter, text=text)


def _meta(value: Any) -> TrainingMeta:
    if value is None:
        return TrainingMeta()
    if not isinstance(value, Mapping):
        raise RecordError(f"expected an object, got {type(value).__name__}", field="meta")
    known = set(TrainingMeta.__dataclass_fields__)
    return TrainingMeta(**{k: v for k, v in value.items() if k in known})


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
