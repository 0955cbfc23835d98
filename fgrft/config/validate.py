"""Validate a composed config against its entrypoint's schema."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fgrft.config.schema import SCHEMAS, choices
from fgrft.errors import ConfigError

__all__ = ["ConfigError", "validate"]


def validate(cfg: DictConfig, entrypoint: str) -> DictConfig:
    """Return `cfg` merged onto its schema (defaults filled, types checked).

    Raises ConfigError naming the offending key for an unknown key, a wrong
    type or a value outside a switch's allowed set.
    """
    schema = OmegaConf.structured(SCHEMAS[entrypoint])
    body = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    unset = _unset_keys(schema, body)
    if unset:
        raise ConfigError(f"config error at '{unset[0]}': no value; the composed config (conf/ and the "
                          f"overrides) must set {', '.join(unset)}")
    try:
        merged = OmegaConf.merge(schema, body)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config error at '{key}': {_first_line(e)}") from None
    for key, allowed in choices().items():
        node_exists = OmegaConf.select(merged, key.split(".")[0], default=None) is not None
        if not node_exists or OmegaConf.select(merged, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            continue
        value = OmegaConf.select(merged, key, default=None, throw_on_missing=False)
        if value not in allowed:
            shown = sorted(a for a in allowed if a is not None)
            raise ConfigError(f"config error at '{key}': {value!r} is not one of {shown}")
    OmegaConf.set_struct(merged, True)
    return merged


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]


_ABSENT = object()


def _unset_keys(schema: DictConfig, body: Any, prefix: str = "") -> list[str]:
    """Schema keys without a default that ``body`` does not hold at all (a ``???`` value counts as
    held: the user must set it, and the code that reads it says so)."""
    out: list[str] = []
    present = set(body.keys()) if isinstance(body, DictConfig) and not body._is_none() else set()
    for key in schema.keys():
        full = f"{prefix}{key}"
        child = schema._get_node(key)
        if key not in present:
            if OmegaConf.is_missing(schema, key):
                out.append(full)
            elif isinstance(child, DictConfig) and not child._is_none():
                out += _unset_keys(child, None, f"{full}.")
            continue
        held = body._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() \
                and isinstance(held, DictConfig) and not held._is_none() and not held._is_missing():
            out += _unset_keys(child, held, f"{full}.")
    return out
