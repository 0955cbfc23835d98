"""Plain-mapping option specs (what ``OmegaConf.to_container(cfg.<group>)`` gives).

Loaders take a mapping plus keyword overrides and read the keys they know;
unknown keys are left alone (rejecting misspelt keys is the config layer's job).
"""
from __future__ import annotations

from typing import Any, Mapping


def merged(spec: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(spec or {})
    out.update(overrides)
    return out


def optional_int(spec: Mapping[str, Any], key: str, group: str, *, minimum: int = 0) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{group}.{key} must be an integer >= {minimum} or null, got {value!r}")
    return value


def first_set(*values: Any) -> Any:
    """The first value that is not None (spec value before option default)."""
    return next((v for v in values if v is not None), None)
