"""Config plumbing: packaged locations, option lists read from conf/, resolvers, schemas, validation, scale.

Imports only :mod:`fgrft.errors` from the rest of fgrft: never the stages, tracking, the app
or the call engine."""
from fgrft.config.locations import CONF_DIR, PRICES_FILE, PROMPTS_DIR
from fgrft.config.resolvers import register_resolvers
from fgrft.config.validate import ConfigError, validate

__all__ = ["CONF_DIR", "PRICES_FILE", "PROMPTS_DIR", "ConfigError", "register_resolvers", "validate"]
