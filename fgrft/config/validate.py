"""Validate a composed config against its entrypoint's schema."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fgrft.config.schema import CHOICES, SCHEMAS
from fgrft.errors import ConfigError

__all__ = ["ConfigError", "validate"]


def validate(cfg: DictConfig, entrypoint: str) -> DictConfig:
    """Return `cfg` merged onto its schema (defaults filled, types checked).

    Raises ConfigError naming the offending key for an unknown key, a wrong
    type or a value outside a switch's allowed set.
    """
    schema = OmegaConf.structured(SCHEMAS[entrypoint])
    body = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        merged = OmegaConf.merge(schema, body)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config error at '{key}': {_first_line(e)}") from None
    for key, allowed in CHOICES.items():
        node_exists = OmegaConf.select(merged, key.split(".")[0], default=None) is not None
        if not node_exists:
            continue
        value = OmegaConf.select(merged, key, default=None, throw_on_missing=False)
        if value not in allowed:
            shown = sorted(a for a in allowed if a is not None)
            raise ConfigError(f"config error at '{key}': {value!r} is not one of {shown}")
    OmegaConf.set_struct(merged, True)
    return merged


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]
