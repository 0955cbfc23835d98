"""Loaders: benchmark files and hub sets, Stage 1 sources, training sets, fixtures.

Every loader takes a plain mapping of its config group's keys (what
``OmegaConf.to_container(cfg.<group>)`` gives) plus keyword overrides, and
raises :class:`~fgrft.records.RecordError` (naming file, record and field) for
malformed data and :class:`DataUnavailable` for data that cannot be reached.
Importing this package does not import ``datasets``; the hub is touched only
when a loader resolves to it. Imports only :mod:`fgrft.records` from the rest of fgrft: never
the stages, tracking, the app, the call engine or the models package.
"""
from .benchmarks import benchmark_items, benchmark_names, load_benchmark
from .contamination import (Overlap, OverlapSettings, check_contamination, find_overlaps,
                            overlapping_train_ids)
from .files import BUNDLED_DIR, DataUnavailable, bundled_path
from .sampling import draw
from .sources import SourceLoad, load_source, source_names
from .training import (Selection, assistant_target, data_names, load_training_records,
                       select_records, split_conclusion, split_question_text)

__all__ = [
    "BUNDLED_DIR", "DataUnavailable", "Overlap", "OverlapSettings", "Selection", "SourceLoad",
    "assistant_target", "benchmark_items", "benchmark_names", "bundled_path", "check_contamination",
    "data_names", "draw", "find_overlaps",
    "load_benchmark", "load_source", "load_training_records", "overlapping_train_ids",
    "select_records", "source_names", "split_conclusion", "split_question_text",
]
