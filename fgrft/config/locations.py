"""Where the packaged `conf/` and `prompts/` live, editable install or wheel."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def _locate(name: str) -> Path:
    # A wheel carries them inside the package (pyproject's force-include); a source
    # checkout or editable install keeps them beside the package.
    for candidate in (_PACKAGE / f"_{name}", _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fgrft: cannot find its {name}/ directory next to {_PACKAGE}")


CONF_DIR = _locate("conf")
PROMPTS_DIR = _locate("prompts")
EXPERIMENTS_DIR = _locate("experiments")
# The API price table; the call engine takes its path as a setting (it does not import config).
PRICES_FILE = CONF_DIR / "prices.yaml"
