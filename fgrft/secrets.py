"""The one redaction rule, used by logs, error messages, MLflow params and tags, traces and run files.

The rule: mask as ``***``

* the value of every environment variable named by an ``api_key_env`` key of the config (see
  :func:`register_secret_envs`) or whose name ends in ``_KEY``, ``_TOKEN`` or ``_SECRET``,
  plus any value a caller knows to be secret (the API engine passes its lanes' keys), when
  the value is 6 characters or more: shorter values are placeholders such as ``EMPTY`` for a
  keyless server, and masking them would mangle ordinary words;
* any key-shaped token: ``sk-...`` (OpenAI-style keys, which servers echo in part in 401
  bodies) and the token after ``Bearer``.

This module imports nothing from fgrft, so the API engine can use it without the config package.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Mapping

SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET")
MASK = "***"
MIN_SECRET_LEN = 6
_KEY_SHAPES = re.compile(r"(?i)(bearer\s+)\S+|\bsk-[A-Za-z0-9_\-*.]{4,}")

_named_secret_envs: set[str] = set()


def _api_key_env_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "api_key_env" and isinstance(v, str) and v:
                names.add(v)
            else:
                names |= _api_key_env_names(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            names |= _api_key_env_names(v)
    return names


def register_secret_envs(cfg: Any) -> None:
    """Remember which env vars the config (a DictConfig or a plain mapping) names as API keys."""
    if cfg is None:
        return
    if type(cfg).__module__.startswith("omegaconf"):  # omegaconf is imported only when a config is passed
        from omegaconf import OmegaConf

        # Unresolved, so missing values (Hydra's own ``???``) are not touched.
        cfg = OmegaConf.to_container(cfg, resolve=False)
    _named_secret_envs.update(_api_key_env_names(cfg))


def secret_values(extra: Iterable[str] = ()) -> list[str]:
    """The values to mask, longest first (so a key that contains another is masked whole)."""
    names = set(_named_secret_envs) | {k for k in os.environ if k.upper().endswith(SECRET_SUFFIXES)}
    values = {os.environ[n] for n in names if os.environ.get(n)} | {s for s in extra if s}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret value (see the module docstring) and key-shaped token masked."""
    return _mask(text, secret_values(secrets))


def _mask(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, MASK)
    return _KEY_SHAPES.sub(lambda m: (m.group(1) or "") + MASK, text)


def redact_obj(obj: Any) -> Any:
    """:func:`redact` applied to every string inside nested mappings and lists."""
    # The environment is read once per object, not once per string (traces hold thousands).
    values = secret_values()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _mask(node, values)
        if isinstance(node, Mapping):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        return node

    return walk(obj)


class RedactingFilter(logging.Filter):
    """Logging filter that masks secrets in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
