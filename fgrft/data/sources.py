"""Stage 1 input questions: ``load_source(spec) -> SourceLoad``.

Options (``source.name``) are the files under ``conf/source/``: ``sample``
(the bundled questions, source ``MedQA_sample_train``) and hub sets such as
``medqa_train`` (``hub_id``/``split`` from its file). ``path`` wins when set;
``file_key`` picks a source inside a multi-source file; a key the spec leaves
unset takes the option file's value.

Unlike a benchmark, a training source may repeat a question: repeats are
dropped (first kept) and counted. Then ``limit`` keeps the first N, then ``n``
questions are drawn with ``seed`` (see :mod:`fgrft.data.sampling`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fgrft.config.options import group_options, option_values
from fgrft.records import Question

from . import hub
from .files import bundled_path, where
from .questions import drop_duplicates, pick_source, read_question_file
from .sampling import draw
from .spec import first_set, merged, optional_int

SAMPLE_FILE = "source_sample.json"
SAMPLE_SOURCE = "MedQA_sample_train"


def source_names() -> tuple[str, ...]:
    """The ``source.name`` options: the files under ``conf/source/``."""
    return group_options("source")


@dataclass
class SourceLoad:
    """The questions Stage 1 will work on, and how they were chosen."""

    questions: list[Question]
    duplicates_dropped: int  # repeats of an earlier question in the source
    origin: str              # file path or hf:// address read
    source: str              # source name (MedQA_train, MedQA_sample_train, ...)
    available: int           # unique questions before limit and draw

    @property
    def ids(self) -> list[str]:
        return [q.id for q in self.questions]


def load_source(spec: Mapping[str, Any] | None = None, /, *, cache_dir: str | None = None,
                **overrides: Any) -> SourceLoad:
    """Load Stage 1 questions from the ``source`` group's keys (``name``, ``path``,
    ``file_key``, ``hub_id``, ``split``, ``limit``, ``seed``, ``n``)."""
    spec = merged(spec, overrides)
    name = spec.get("name")
    option = option_values("source", name)
    limit = optional_int(spec, "limit", "source")
    n = optional_int(spec, "n", "source")
    seed = spec.get("seed")
    if n is not None and seed is None:
        raise ValueError("source.n draws questions with source.seed, which is not set")

    if spec.get("path"):
        path = Path(spec["path"]).expanduser()
        file_key = spec.get("file_key")
        sources = read_question_file(path, default_source=file_key or path.stem)
        source, items = pick_source(sources, file_key, path)
        origin = where(path, source)
    elif name == "sample":
        path = bundled_path(SAMPLE_FILE)
        source, items = pick_source(read_question_file(path, default_source=SAMPLE_SOURCE),
                                    spec.get("file_key") or SAMPLE_SOURCE, path)
        origin = where(path, source)
    elif option.get("hub_id") or spec.get("hub_id"):
        hub_id = first_set(spec.get("hub_id"), option.get("hub_id"))
        split = first_set(spec.get("split"), option.get("split"))
        config = spec.get("hub_config")
        source, items = hub.hub_questions(hub_id, config, split, cache_dir=cache_dir)
        origin = hub.hub_origin(hub_id, config, split)
    else:
        raise ValueError(f"unknown source {name!r}; options: {', '.join(source_names())} "
                         "(or set source.path)")

    items, dropped = drop_duplicates(items)
    questions = [q for _, q in items]
    available = len(questions)
    questions = questions[:limit]
    if n is not None:
        questions = draw(questions, n, seed)
    return SourceLoad(questions=questions, duplicates_dropped=dropped, origin=origin,
                      source=source, available=available)
