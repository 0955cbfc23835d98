"""Evaluation benchmarks: ``load_benchmark(spec) -> {source: [Question]}``.

Options (``benchmark.name``) are the files under ``conf/benchmark/``: ``all``
(the three thesis sources, read from ``dir``), ``sample`` (the bundled fixtures
``MedQA_sample``, ``PubMedQA_sample``, ``MedMCQA_sample``) and one source each
for every other file (``medqa``, ``pubmedqa``, ``medmcqa``).

A single-source option is resolved in this order: ``path`` (one local file),
``dir`` (the thesis file that holds ``file_key``), ``hub_id``; a key the spec
leaves unset takes the option file's value. A new hub set also needs its row
converter in :data:`fgrft.data.hub.QUESTION_CONVERTERS`. The MedMCQA
1,000-item subset exists only as the thesis file: its hub split has 4,183 items.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from fgrft.config.options import group_options, option_values
from fgrft.records import Question, RecordError

from . import hub
from .files import DataUnavailable, bundled_path, read_grouped_rows, where
from .questions import duplicate_error, parse_questions, pick_source, read_question_file
from .spec import first_set, merged, optional_int

log = logging.getLogger(__name__)

# The thesis benchmark files and the sources each holds (the misspelling USLME is original).
THESIS_FILES = {
    "MedQA_USLME_test": "eval_data_clinical.json",
    "PubMedQA_test": "eval_data_clinical.json",
    "MedMCQA_validation": "eval_data_medmcqa.json",
}
SAMPLE_FILE = "benchmark_sample.json"
# The options that read several sources, each by its own loader; every other option of the
# benchmark group (conf/benchmark/<name>.yaml) is one source, resolved from its own keys.
MULTI_SOURCE = ("all", "sample")


def benchmark_names() -> tuple[str, ...]:
    """The ``benchmark.name`` options: the files under ``conf/benchmark/``."""
    return group_options("benchmark")


def load_benchmark(spec: Mapping[str, Any] | None = None, /, *, cache_dir: str | None = None,
                   **overrides: Any) -> dict[str, list[Question]]:
    """Load a benchmark: {source name: [Question]} in file order.

    ``spec`` holds the ``benchmark`` group's keys (``name``, ``dir``, ``path``,
    ``file_key``, ``hub_id``, ``hub_config``, ``split``, ``limit``); keyword
    arguments override them. ``limit`` keeps the first N items per source.
    Raises :class:`RecordError` for malformed data (including two items with
    the same id) and :class:`DataUnavailable` when the data cannot be reached.
    """
    spec = merged(spec, overrides)
    name = spec.get("name")
    limit = optional_int(spec, "limit", "benchmark")
    if name in MULTI_SOURCE:
        if spec.get("path"):
            log.warning("benchmark.path is for single-source options; benchmark=%s ignores it", name)
        sources = _load_all(spec) if name == "all" else _load_sample(spec)
    elif name in benchmark_names():
        sources = dict([_load_single(spec, option_values("benchmark", name), cache_dir)])
    elif name is None and spec.get("path"):
        sources = _load_file(Path(spec["path"]).expanduser(), spec.get("file_key"))
    else:
        raise ValueError(f"unknown benchmark {name!r}; options: {', '.join(benchmark_names())}")
    _check_unique_across(sources)
    return {source: [q for _, q in items[:limit]] for source, items in sources.items()}


def benchmark_items(benchmark: Mapping[str, list[Question]]) -> list[Question]:
    """All items of a loaded benchmark in source order."""
    return [q for items in benchmark.values() for q in items]


# --- resolution ------------------------------------------------------------------

Items = list[tuple[int, Question]]


def _load_file(path: Path, file_key: str | None) -> dict[str, Items]:
    """A file given without an option name: every source in it, or file_key's."""
    sources = read_question_file(path, default_source=file_key or path.stem)
    if file_key:
        sources = dict([pick_source(sources, file_key, path)])
    return {name: _checked(items, where(path, name)) for name, items in sources.items()}


def _load_single(spec: Mapping[str, Any], option: Mapping[str, Any],
                 cache_dir: str | None) -> tuple[str, Items]:
    """One source: spec keys that are set win over the option file's (``option``)."""
    file_key = first_set(spec.get("file_key"), option.get("file_key"))
    label = f"benchmark={spec.get('name')}"
    if spec.get("path"):
        path = Path(spec["path"]).expanduser()
        sources = read_question_file(path, default_source=file_key or path.stem)
        source, items = pick_source(sources, file_key, path)
        return source, _checked(items, where(path, source))
    if spec.get("dir"):
        return _from_thesis_dir(Path(spec["dir"]).expanduser(), file_key, label)
    hub_id = first_set(spec.get("hub_id"), option.get("hub_id"))
    if hub_id:
        # The option's config (pqa_labeled) only means something for its own hub set.
        own_hub = hub_id.lower() == (option.get("hub_id") or "").lower()
        config = first_set(spec.get("hub_config"), option.get("hub_config") if own_hub else None)
        split = first_set(spec.get("split"), option.get("split"))
        # Known hub sets are named by their thesis keys; others by file_key when given.
        known = hub_id.lower() in hub.QUESTION_CONVERTERS
        source, items = hub.hub_questions(hub_id, config, split, cache_dir=cache_dir,
                                          source=None if known else file_key)
        if hub_id.lower() == hub.MEDMCQA_HUB.lower():
            log.warning("the MedMCQA hub split is not the thesis's 1,000-item subset: "
                        "set benchmark.dir or benchmark.path to reproduce the thesis")
        return source, _checked(items, hub.hub_origin(hub_id, config, split))
    raise DataUnavailable(f"{label}: set benchmark.path, benchmark.dir or benchmark.hub_id")


def _from_thesis_dir(directory: Path, file_key: str | None, label: str) -> tuple[str, Items]:
    if not directory.is_dir():
        raise DataUnavailable(f"{label}: benchmark.dir {directory} is not a directory")
    if not file_key:
        raise ValueError(f"{label}: benchmark.dir needs benchmark.file_key (one of {sorted(THESIS_FILES)})")
    file_name = THESIS_FILES.get(file_key)
    if file_name is None:
        raise ValueError(f"{label}: file_key {file_key!r} is not in a thesis file; "
                         f"known keys: {sorted(THESIS_FILES)} (use benchmark.path for other files)")
    path = directory / file_name
    sources = read_question_file(path, default_source=file_key)
    if file_key not in sources:
        raise RecordError(f"no source {file_key!r} in this file; it holds {sorted(sources)}", file=path)
    return file_key, _checked(sources[file_key], where(path, file_key))


def _load_all(spec: Mapping[str, Any]) -> dict[str, Items]:
    if not spec.get("dir"):
        raise DataUnavailable("benchmark=all reads the thesis files from benchmark.dir, which is "
                              "not set (set benchmark.dir or the FGRFT_BENCHMARK_DIR path it points to)")
    directory = Path(spec["dir"]).expanduser()
    return dict(_from_thesis_dir(directory, key, "benchmark=all") for key in THESIS_FILES)


def _load_sample(spec: Mapping[str, Any]) -> dict[str, Items]:
    path = bundled_path(SAMPLE_FILE)
    groups, _ = read_grouped_rows(path)
    file_key = spec.get("file_key")
    if file_key and file_key not in groups:
        raise ValueError(f"benchmark=sample has no source {file_key!r}; it holds {list(groups)}")
    return {key: _checked(parse_questions(rows, key, where(path, key)), where(path, key))
            for key, rows in groups.items() if not file_key or key == file_key}


def _checked(items: Items, origin: str) -> Items:
    error = duplicate_error(items, origin)
    if error:
        raise error
    return items


def _check_unique_across(sources: Mapping[str, Items]) -> None:
    seen: dict[str, str] = {}
    for source, items in sources.items():
        for index, q in items:
            if q.id in seen and seen[q.id] != source:
                raise RecordError(f"duplicate item: the same question and options are also in "
                                  f"source {seen[q.id]!r} (id {q.id})",
                                  file=source, index=index, field="question")
            seen.setdefault(q.id, source)
