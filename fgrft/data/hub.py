"""Hugging Face hub datasets: the one ``load_dataset`` call site and row converters.

Each converter turns one hub row into a row of the thesis benchmark format
(``question``, ``options``, ``answer_idx``, ``answer``) or, for the naive-CoT
set, ``question``/``response``; validation then happens in one place
(:mod:`fgrft.data.questions`, :mod:`fgrft.data.training`).

Tests replace :func:`load_dataset` (``monkeypatch.setattr(hub, "load_dataset",
fake)``); everything else here is pure and runs on in-memory rows.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from fgrft.records import LETTERS, Question, RecordError

from .files import DataUnavailable
from .questions import located, question_from_row

MEDQA_HUB = "GBaker/MedQA-USMLE-4-options"
PUBMEDQA_HUB = "qiaojin/PubMedQA"
PUBMEDQA_CONFIG = "pqa_labeled"
MEDMCQA_HUB = "openlifescienceai/medmcqa"
MIXTRAL_COT_HUB = "HPAI-BSC/MedQA-Mixtral-CoT"

# The sentence the thesis's PubMedQA file puts between the abstract and the question.
PUBMEDQA_BRIDGE = ("\n\nUsing the above document as a reference, please review the following "
                   "question and choose the option you find most appropriate.\n")
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def load_dataset(hub_id: str, config: str | None = None, split: str | None = None,
                 cache_dir: str | None = None) -> Iterable[Mapping[str, Any]]:
    """The only place the package calls ``datasets.load_dataset``."""
    import datasets  # heavy import, only when the hub is really used

    return datasets.load_dataset(hub_id, config, split=split, cache_dir=cache_dir)


def hub_origin(hub_id: str, config: str | None, split: str | None) -> str:
    """How errors name a hub split: ``hf://owner/name[config]/split``."""
    return f"hf://{hub_id}" + (f"[{config}]" if config else "") + f"/{split}"


def hub_rows(hub_id: str, config: str | None, split: str | None,
             cache_dir: str | None = None) -> list[tuple[int, Mapping[str, Any]]]:
    """All rows of a hub split, indexed; any failure to fetch is DataUnavailable."""
    try:
        dataset = load_dataset(hub_id, config, split, cache_dir)
        rows = list(enumerate(dataset))
    except Exception as e:  # offline, unknown id/config/split, auth: all "cannot load"
        raise DataUnavailable(f"cannot load {hub_origin(hub_id, config, split)}: "
                              f"{type(e).__name__}: {e}") from e
    if not rows:
        raise RecordError("the split holds no rows", file=hub_origin(hub_id, config, split))
    return rows


# --- converters: hub row -> thesis-format row --------------------------------

def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row or row[name] is None:
        raise RecordError("missing", field=name)
    return row[name]


def medqa_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """GBaker/MedQA-USMLE-4-options: question, options {letter: text}, answer_idx, answer."""
    options = _field(row, "options")
    if not isinstance(options, Mapping):
        raise RecordError(f"expected {{letter: text}}, got {type(options).__name__}", field="options")
    return {"question": _field(row, "question"),
            # Arrow structs come back with every key; drop letters this row leaves empty.
            "options": {k: v for k, v in options.items() if v is not None},
            "answer_idx": _field(row, "answer_idx"),
            "answer": row.get("answer")}


def pubmedqa_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """qiaojin/PubMedQA pqa_labeled: the abstract's context paragraphs joined by single
    spaces, the bridge sentence, then the question; yes/no/maybe as A/B/C."""
    context = _field(row, "context")
    contexts = context.get("contexts") if isinstance(context, Mapping) else None
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
        raise RecordError("expected a non-empty list of paragraphs", field="context.contexts")
    question = _field(row, "question")
    if not isinstance(question, str):
        raise RecordError(f"expected text, got {type(question).__name__}", field="question")
    decision = _field(row, "final_decision")
    letter = {v: k for k, v in PUBMEDQA_OPTIONS.items()}.get(str(decision).strip().lower())
    if letter is None:
        raise RecordError(f"expected yes, no or maybe, got {decision!r}", field="final_decision")
    return {"question": " ".join(contexts) + PUBMEDQA_BRIDGE + question,
            "options": dict(PUBMEDQA_OPTIONS), "answer_idx": letter,
            "answer": PUBMEDQA_OPTIONS[letter]}


def medmcqa_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """openlifescienceai/medmcqa: options opa..opd, gold index cop 0-3."""
    options = {letter: _field(row, f"op{letter.lower()}") for letter in "ABCD"}
    cop = _field(row, "cop")
    if isinstance(cop, bool) or not isinstance(cop, int) or not 0 <= cop <= 3:
        raise RecordError(f"expected a gold index 0-3, got {cop!r}", field="cop")
    letter = LETTERS[cop]
    return {"question": _field(row, "question"), "options": options,
            "answer_idx": letter, "answer": options[letter]}


def mixtral_cot_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """HPAI-BSC/MedQA-Mixtral-CoT: the question (with its options) and the CoT response."""
    return {"question": _field(row, "question"), "response": _field(row, "response")}


def thesis_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Any other hub set already in the thesis shape."""
    return dict(row)


QUESTION_CONVERTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    MEDQA_HUB.lower(): medqa_row,
    PUBMEDQA_HUB.lower(): pubmedqa_row,
    MEDMCQA_HUB.lower(): medmcqa_row,
}


def question_converter(hub_id: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return QUESTION_CONVERTERS.get(hub_id.lower(), thesis_row)


def hub_source_name(hub_id: str, split: str | None) -> str:
    """The source name of a hub split: the thesis file key where the thesis has one."""
    key = hub_id.lower()
    if key == MEDQA_HUB.lower():
        return {"test": "MedQA_USLME_test", "train": "MedQA_train"}.get(split or "", f"MedQA_{split}")
    if key == PUBMEDQA_HUB.lower():
        return "PubMedQA_test"  # PQA-L has one split; the thesis calls it test
    if key == MEDMCQA_HUB.lower():
        return "MedMCQA_validation" if split == "validation" else f"MedMCQA_{split}"
    if key == MIXTRAL_COT_HUB.lower():
        return "MedQA_Mixtral_CoT"
    return f"{hub_id.rsplit('/', 1)[-1]}_{split}"


def hub_questions(hub_id: str, config: str | None, split: str | None, *,
                  source: str | None = None, cache_dir: str | None = None
                  ) -> tuple[str, list[tuple[int, Question]]]:
    """A hub split as validated Questions: (source name, [(row index, Question)])."""
    origin = hub_origin(hub_id, config, split)
    source = source or hub_source_name(hub_id, split)
    convert = question_converter(hub_id)
    items = []
    for index, row in hub_rows(hub_id, config, split, cache_dir):
        try:
            items.append((index, question_from_row(convert(row), source)))
        except RecordError as e:
            raise located(e, origin, index) from None
    return source, items
