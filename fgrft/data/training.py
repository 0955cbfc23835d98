"""Stage 2 training sets: ``load_training_records(spec) -> [TrainingRecord]``.

Options (``data.name``) are the files under ``conf/data/``: ``sample`` (bundled
FGRFT records), ``sample_naive`` (bundled naive-CoT records on the same
questions), ``fgrft_5k`` (records.jsonl written by generate: set ``path``),
``naive_cot_5k`` and ``naive_cot_5k_structured`` (hub
``HPAI-BSC/MedQA-Mixtral-CoT``). A key the spec leaves unset takes the option
file's value (``bundled``: a fixture file; ``source``: the source name of rows
that carry none).

Two record shapes are read:

* FGRFT (``format=fgrft``): ``Question``, ``Complex_CoT``, ``Response``, plus
  ``id``, ``source``, ``gold``, ``meta`` when present. The thesis's own files
  spelt the two texts ``guided_solution``/``final_response`` and
  ``Guided_Solution``/``Final_Response``; both are accepted.
* naive CoT (``format=naive_cot``): ``question`` (stem and option lines) and
  ``response`` (one text: rephrase, discuss each option, conclude). The
  question is split into stem and options so that ids and stem_ids join with
  FGRFT records; the response is split into its reasoning and its concluding
  paragraph (``Complex_CoT``/``Response``) for the format-matched arm and kept
  whole as ``raw_response`` for the faithful arm.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fgrft.records import (COT_FIELDS, RecordError, TrainingRecord, gold_field, item_id, question_with_options,
                           split_option_lines, text_field, training_record_from_row)
from fgrft.config.options import group_options, option_values

from . import hub
from .files import DataUnavailable, Row, bundled_path, read_grouped_rows
from .questions import located
from .sampling import draw
from .spec import first_set, merged, optional_int

log = logging.getLogger(__name__)

FORMATS = ("fgrft", "naive_cot")
TARGET_FORMATS = ("thinking", "raw")
THINKING_TEMPLATE = "## Thinking\n\n{cot}\n\n## Final Response\n\n{response}"




def data_names() -> tuple[str, ...]:
    """The ``data.name`` options: the files under ``conf/data/``."""
    return group_options("data")


def load_training_records(spec: Mapping[str, Any] | None = None, /, *,
                          cache_dir: str | None = None, **overrides: Any) -> list[TrainingRecord]:
    """Load a training set from the ``data`` group's keys (``name``, ``path``,
    ``hub_id``, ``split``, ``n``, ``seed``, ``format``, ``target_format``).

    ``path`` wins, then the bundled file of a sample option, then ``hub_id``.
    Records repeating an earlier id are dropped (with a warning). ``n`` draws
    that many records with ``seed`` (the same draw as ``source.n``/``seed``).
    """
    spec = merged(spec, overrides)
    name = spec.get("name")
    option = option_values("data", name)
    if not option and not spec.get("path"):
        raise ValueError(f"unknown data option {name!r}; options: {', '.join(data_names())} "
                         "(or set data.path)")
    data_format = first_set(spec.get("format"), option.get("format"), "fgrft")
    if data_format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {data_format!r}")
    target = first_set(spec.get("target_format"), option.get("target_format"), "thinking")
    if target not in TARGET_FORMATS:
        raise ValueError(f"data.target_format must be one of {TARGET_FORMATS}, got {target!r}")
    n = optional_int(spec, "n", "data")
    if n is not None and spec.get("seed") is None:
        raise ValueError("data.n draws records with data.seed, which is not set")
    # A file under a name that is no option: the source its format's records come from.
    default_source = first_set(spec.get("source"), option.get("source"),
                               "MedQA_Mixtral_CoT" if data_format == "naive_cot" else "MedQA_train")

    rows, origin = _rows(spec, option, cache_dir)
    records = _dedupe([record_from_row(row, data_format, default_source, origin, index)
                       for index, row in rows], origin)
    if n is not None:
        records = draw(records, n, spec["seed"])
    return records


def _rows(spec: Mapping[str, Any], option: Mapping[str, Any],
          cache_dir: str | None) -> tuple[list[Row], str]:
    if spec.get("path"):
        path = Path(spec["path"]).expanduser()
        return _file_rows(path), str(path)
    bundled = first_set(spec.get("bundled"), option.get("bundled"))
    if bundled:
        path = bundled_path(bundled)
        return _file_rows(path), str(path)
    hub_id = first_set(spec.get("hub_id"), option.get("hub_id"))
    if not hub_id:
        raise DataUnavailable(f"data={spec.get('name')}: set data.path (the records.jsonl "
                              "written by generate) or data.hub_id")
    split = first_set(spec.get("split"), option.get("split"), "train")
    convert = hub.mixtral_cot_row if hub_id.lower() == hub.MIXTRAL_COT_HUB.lower() else dict
    origin = hub.hub_origin(hub_id, None, split)
    rows = []
    for index, row in hub.hub_rows(hub_id, None, split, cache_dir):
        try:
            rows.append((index, convert(row)))
        except RecordError as e:
            raise located(e, origin, index) from None
    return rows, origin


def _file_rows(path: Path) -> list[Row]:
    groups, keyed = read_grouped_rows(path)
    if keyed and len(groups) > 1:
        raise RecordError(f"expected one list of records, found several keys {sorted(groups)}", file=path)
    return next(iter(groups.values()))


def _dedupe(records: list[TrainingRecord], origin: str) -> list[TrainingRecord]:
    seen: set[str] = set()
    kept = [r for r in records if not (r.id in seen or seen.add(r.id))]
    if len(kept) < len(records):
        log.warning("%s: dropped %d records repeating an earlier id", origin, len(records) - len(kept))
    return kept


# --- rows -> records ----------------------------------------------------------------

def record_from_row(row: Any, data_format: str, default_source: str, origin: str,
                    index: int) -> TrainingRecord:
    """One validated record; errors name the origin, the row index and the field."""
    try:
        if not isinstance(row, Mapping):
            raise RecordError(f"expected a JSON object, got {type(row).__name__}")
        structured = any(k in row for k in COT_FIELDS)
        if data_format == "naive_cot" and not structured:
            return naive_record_from_row(row, default_source)
        return training_record_from_row(row, default_source)
    except RecordError as e:
        raise located(e, origin, index) from None


def naive_record_from_row(row: Mapping[str, Any], default_source: str) -> TrainingRecord:
    """A naive-CoT row (``question``/``response``, as in HPAI-BSC/MedQA-Mixtral-CoT)."""
    question = text_field(row, ("question",))
    response = text_field(row, ("response",))
    stem, options = split_question_text(question)
    cot, final = split_conclusion(response)
    source = row.get("source") or default_source
    return TrainingRecord(
        id=item_id(stem, options),  # equals stem_id(stem) when no options were found
        source=source,
        Question=question_with_options(stem, options) if options else stem,
        Complex_CoT=cot, Response=final, gold=gold_field(row.get("gold"), options),
        raw_response=response)


# --- splitting naive-CoT texts ---------------------------------------------------------

_QUESTION_LABEL = re.compile(r"^\s*question\s*:\s*", re.IGNORECASE)
_OPTIONS_LABEL = re.compile(r"\s*\b(options|answer choices|choices)\s*:?\s*$", re.IGNORECASE)
# Looser than records.OPTION_LINE: also "A: text" and "A - text".
_LOOSE_OPTION_LINE = re.compile(r"^\s*\(?([A-N])\s*(?:[.):]|\s-)\s*(.*\S)\s*$")
# An inline option marker: "A. ", "(A) ", "A) " or "A: " after whitespace or at the start.
_INLINE_MARKER = re.compile(r"(?:(?<=\s)|^)\(?([A-N])(?:[.:]|\))\s+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_question_text(text: str) -> tuple[str, dict[str, str]]:
    """Separate a question stem from the options it carries.

    Tries, in order: option lines as the evaluation prompt writes them
    (``records.split_option_lines``), looser option lines ("A: text"), then
    options written inline at the end of the text ("... A. x B. y C. z").
    A trailing "Options:" label and a leading "Question:" label are dropped
    from the stem. Returns (stem, {}) when no run of options A, B, C... is found.
    """
    text = _QUESTION_LABEL.sub("", text.strip(), count=1)
    stem, options = split_option_lines(text)
    if not options:
        stem, options = _split_lines(text, _LOOSE_OPTION_LINE)
    if not options:
        stem, options = _split_inline(text)
    if options:
        stem = _OPTIONS_LABEL.sub("", stem).strip()
    return stem, options


def _split_lines(text: str, pattern: re.Pattern) -> tuple[str, dict[str, str]]:
    lines = text.rstrip().split("\n")
    found: dict[str, str] = {}
    cut = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        m = pattern.match(lines[i])
        if not m or m.group(1) in found:
            break
        found[m.group(1)] = m.group(2)
        cut = i
    letters = "".join(sorted(found))
    if len(letters) < 2 or letters != "ABCDEFGHIJKLMN"[: len(letters)]:
        return text.strip(), {}
    return "\n".join(lines[:cut]).strip(), {k: found[k] for k in letters}


def _split_inline(text: str) -> tuple[str, dict[str, str]]:
    """Options run inline at the end: the last "A." marker followed by B., C. ... in order.

    At least three options are required, so that a stem that merely mentions
    "vitamin A. " is not cut."""
    markers = list(_INLINE_MARKER.finditer(text))
    for start in range(len(markers) - 1, -1, -1):
        if markers[start].group(1) != "A":
            continue
        chosen = [markers[start]]
        for m in markers[start + 1:]:
            if ord(m.group(1)) == ord(chosen[-1].group(1)) + 1:
                chosen.append(m)
        if len(chosen) < 3:
            continue
        options = {}
        for m, nxt in zip(chosen, chosen[1:] + [None]):
            value = text[m.end(): nxt.start() if nxt else len(text)].strip()
            if not value:
                break
            options[m.group(1)] = value
        else:
            return text[: chosen[0].start()].strip(), options
    return text.strip(), {}


def split_conclusion(response: str) -> tuple[str, str]:
    """Split a one-text CoT into (reasoning, conclusion).

    The conclusion is the last paragraph; in a single-paragraph text, the last
    sentence; a single sentence is both.
    """
    text = response.strip()
    breaks = list(_PARAGRAPH_BREAK.finditer(text))
    if breaks:
        cut = breaks[-1]
    else:
        ends = list(_SENTENCE_END.finditer(text))
        if not ends:
            return text, text
        cut = ends[-1]
    return text[: cut.start()].strip(), text[cut.end():].strip()


# --- rendering and selection ------------------------------------------------------------

def assistant_target(record: TrainingRecord, target_format: str = "thinking") -> str:
    """The assistant turn a record trains on.

    ``thinking``: "## Thinking / ## Final Response" with Complex_CoT and
    Response. ``raw``: the response as its source wrote it (``raw_response``
    for naive-CoT records; Complex_CoT and Response joined by a blank line for
    records that have no single raw text).
    """
    if target_format == "thinking":
        return THINKING_TEMPLATE.format(cot=record.Complex_CoT.strip(), response=record.Response.strip())
    if target_format == "raw":
        if record.raw_response is not None:
            return record.raw_response
        return f"{record.Complex_CoT.strip()}\n\n{record.Response.strip()}"
    raise ValueError(f"target_format must be one of {TARGET_FORMATS}, got {target_format!r}")


@dataclass
class Selection:
    """Records picked by a list of ids or stem_ids, and how many were found."""

    records: list[TrainingRecord]
    requested: int
    matched: int
    missing: list[str] = field(default_factory=list)


def select_records(records: Iterable[TrainingRecord], wanted: Iterable[str], *,
                   key: str = "stem_id") -> Selection:
    """The records whose ``key`` (``id`` or ``stem_id``) is in ``wanted``.

    One record per wanted value (the first in ``records``), in the order of
    ``wanted``. Join on ``stem_id`` when one side may lack parsed options (the
    naive-CoT set); on ``id`` otherwise.
    """
    if key not in ("id", "stem_id"):
        raise ValueError(f"key must be 'id' or 'stem_id', got {key!r}")
    by_key: dict[str, TrainingRecord] = {}
    for r in records:
        by_key.setdefault(getattr(r, key), r)
    wanted = list(dict.fromkeys(wanted))
    picked = [by_key[w] for w in wanted if w in by_key]
    missing = [w for w in wanted if w not in by_key]
    return Selection(records=picked, requested=len(wanted), matched=len(picked), missing=missing)
