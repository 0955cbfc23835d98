"""Model resolution: a ``model`` config group entry -> what to load.

Order (CONTRACTS.md): ``path`` if set (it must exist), else a builder
(``smol``, ``tiny``: chosen by the ``builder`` key, or by ``name`` when that is
an embedded model's name), else ``hub_id``. With ``scale=toy`` every model
without an explicit ``path`` resolves to the embedded smol model and keeps its
label, so toy runs of a preset still fill the preset's tables; the embedded
models themselves stay what they are (tiny is already the cheapest).

``check_model_spec`` validates without loading or building anything, so an
entrypoint can reject a bad ``model.path`` before spending time elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fgrft.errors import ConfigError

from .embedded import EMBEDDED_MODELS, embedded_model_dir, ensure_built

SCALES = ("full", "toy")
TOY_MODEL = "smol"


class ModelSpecError(ConfigError):
    """A ``model`` config entry that cannot be resolved; the message names the key."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a configured model comes from.

    ``label`` names the model in tables and MLflow (the config's ``name``).
    ``location`` is what to hand to ``from_pretrained`` or vLLM: the local
    directory, or the hub id. ``builder`` is the embedded model used, if any;
    ``substituted`` is true when ``scale=toy`` replaced a hub model with smol
    (``hub_id`` then still names the model the label stands for).
    """

    label: str
    path: Path | None
    hub_id: str | None
    builder: str | None
    is_local: bool
    substituted: bool = False

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else str(self.hub_id)


def _get(spec: Mapping[str, Any], key: str) -> Any:
    value = spec.get(key)
    if isinstance(value, str) and not value.strip():
        return None  # an empty override (model.path=) means "not set"
    return value


def _explicit_path(spec: Mapping[str, Any]) -> Path | None:
    raw = _get(spec, "path")
    if raw is None:
        return None
    path = Path(str(raw)).expanduser()
    # Relative paths are relative to the working directory (paths.root): Hydra never chdirs.
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.exists():
        raise ModelSpecError(f"model.path {raw!r} does not exist (resolved to {path})")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelSpecError(
            f"model.path {raw!r} is a directory without config.json: not a Hugging Face checkpoint"
        )
    return path.resolve()


def _builder_of(spec: Mapping[str, Any]) -> str | None:
    builder = _get(spec, "builder")
    if builder is None:
        name = _get(spec, "name")
        return name if name in EMBEDDED_MODELS else None
    if builder not in EMBEDDED_MODELS:
        raise ModelSpecError(
            f"model.builder {builder!r} is not an embedded model; use one of {', '.join(EMBEDDED_MODELS)} or null"
        )
    return str(builder)


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ModelSpecError(f"scale {scale!r} is not one of {', '.join(SCALES)}")


def check_model_spec(spec: Mapping[str, Any], scale: str = "full") -> None:
    """Validate a ``model`` entry cheaply: nothing is loaded, built or downloaded.

    Raises ModelSpecError for a missing ``model.path``, an unknown builder, or an
    entry with none of path, builder and hub_id.
    """
    _plan(spec, scale)


def _plan(spec: Mapping[str, Any], scale: str) -> tuple[str, Path | None, str | None, str | None, bool]:
    """(label, explicit path, builder, hub_id, substituted) without side effects."""
    _check_scale(scale)
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"the model entry must be a mapping, got {type(spec).__name__}")
    path = _explicit_path(spec)
    builder = _builder_of(spec)
    hub_id = _get(spec, "hub_id")
    label = _get(spec, "name") or builder or hub_id or (path.name if path else None)
    if label is None:
        raise ModelSpecError("the model entry has none of name, path, builder, hub_id")
    label = str(label)
    if path is not None:
        return label, path, None, hub_id, False
    if builder is None and scale == "toy":
        return label, None, TOY_MODEL, hub_id, True
    if builder is None and hub_id is None:
        raise ModelSpecError(f"model {label!r} has no path, builder or hub_id to load it from")
    return label, None, builder, hub_id, False


def resolve_model(
    spec: Mapping[str, Any], cache_dir: str | Path, scale: str = "full", *, build: bool = True
) -> ResolvedModel:
    """Resolve a ``model`` entry; build the embedded model it needs (unless ``build=False``).

    ``cache_dir`` is ``paths.cache``; embedded models live in ``<cache>/models/<name>``.
    With ``build=False`` the returned path may not exist yet (a dry run, a plan).
    """
    label, path, builder, hub_id, substituted = _plan(spec, scale)
    if path is not None:
        return ResolvedModel(label=label, path=path, hub_id=hub_id, builder=None, is_local=True)
    if builder is not None:
        built = ensure_built(builder, cache_dir) if build else embedded_model_dir(builder, cache_dir)
        return ResolvedModel(label=label, path=built, hub_id=hub_id, builder=builder, is_local=True,
                             substituted=substituted)
    return ResolvedModel(label=label, path=None, hub_id=str(hub_id), builder=None, is_local=False)
