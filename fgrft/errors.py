"""Error types shared across packages; this module imports nothing from fgrft.

:class:`ConfigError` is the one error for settings that cannot work, whoever finds them: the
config schema (an unknown key, a wrong type, a value outside a switch's set) or the API
engine (endpoint settings, sampling, a schema). It is raised before any money or GPU time is
spent, and catching it catches both.

:class:`RecordError` is a malformed input file (a record or field that cannot be read).
:class:`DataUnavailable` is a data set that cannot be reached from here (no file, no directory
configured, the hub offline).
:data:`USER_ERRORS` are the errors a user fixes on the command line or in a file: the app
prints them as one line, without a traceback, and a run that just started for them is removed.
"""
from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """Settings that cannot work; the message names the key, endpoint or field."""


class RecordError(ValueError):
    """A malformed record: the message names file, record index and field."""

    def __init__(self, message: str, *, file: str | Path | None = None,
                 index: int | None = None, field: str | None = None):
        self.file, self.index, self.field = file, index, field
        # The bare message, so a caller can re-raise it with a location added.
        self.reason = message
        where = []
        if file is not None:
            where.append(str(file))
        if index is not None:
            where.append(f"record {index}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class DataUnavailable(RuntimeError):
    """A data set that cannot be reached from here: no such file, no directory
    configured, or the hub is offline. Distinct from :class:`RecordError`
    (data that was read but is malformed) so that callers such as the
    contamination check can report "not checked" instead of failing."""


# A missing file (a replay file, a prompt template, a benchmark file) names its path.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, RecordError, DataUnavailable, FileNotFoundError)
