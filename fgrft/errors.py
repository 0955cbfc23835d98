"""Error types shared across packages; this module imports nothing from fgrft.

:class:`ConfigError` is the one error for settings that cannot work, whoever finds them: the
config schema (an unknown key, a wrong type, a value outside a switch's set) or the API
engine (endpoint settings, sampling, a schema). It is raised before any money or GPU time is
spent, and catching it catches both.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Settings that cannot work; the message names the key, endpoint or field."""
