"""A config group's options, read from the YAML files under ``conf/<group>/``.

The files are the one list of options and the one place their values live: code
that needs "which benchmarks are there" or "what does data=sample_naive hold"
asks here instead of keeping a second list. Adding an option is adding a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fgrft.config import locations


def _group_dir(group: str) -> Path:
    # Read at call time, so that a test can point the package at a copy of conf/.
    return locations.CONF_DIR / group


def group_options(group: str) -> tuple[str, ...]:
    """The option names of ``group``: the stems of ``conf/<group>/*.yaml``, sorted."""
    return tuple(sorted(p.stem for p in _group_dir(group).glob("*.yaml")))


def option_values(group: str, name: str | None) -> dict[str, Any]:
    """The keys ``conf/<group>/<name>.yaml`` sets; empty for a name that is no option."""
    path = _group_dir(group) / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        return {}
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of keys, found {type(values).__name__}")
    return {k: v for k, v in values.items() if k != "defaults"}


def group_values(group: str, key: str) -> set[Any]:
    """Every value the options of ``group`` give ``key`` (e.g. the inference backends)."""
    return {option_values(group, name).get(key) for name in group_options(group)}
