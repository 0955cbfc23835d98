"""The generator and verifier endpoints a run talks to, from the ``generator``/``verifier`` groups.

    with open_endpoints(cfg, run_dir) as backends:   # starts the embedded server if a role needs it
        backends.endpoints["generator"]              # an fgrft.llm.EndpointSettings
        backends.fallback                            # the verifier's fallback endpoint, or None

Kinds: ``embedded`` (the smol model on a local vLLM CPU server started here and stopped on
the way out; both roles share it, hence one lane), ``vllm`` (any OpenAI-compatible server at
``base_url``) and ``openai`` (the hosted API; the engine's profile handles reasoning models).
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from fgrft.llm import ConfigError, EndpointSettings
from fgrft.llm.profiles import is_reasoning_model

log = logging.getLogger(__name__)

ROLES = ("generator", "verifier")
EMBEDDED_MODEL = "smol"
_ENDPOINT_KEYS = ("api_key_env", "concurrency", "rpm", "tpm", "timeout_s", "mode", "batch_poll_s",
                  "batch_max_tries", "max_enqueued_tokens")


def role_settings(cfg: DictConfig, role: str) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg[role], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{role}: {exc.full_key} must be set (e.g. {exc.full_key}=NAME)") from None


def is_local(settings: dict[str, Any]) -> bool:
    return settings["kind"] in ("embedded", "vllm")


def is_reasoning(settings: dict[str, Any]) -> bool:
    return settings["kind"] == "openai" and is_reasoning_model(settings["model"])


def served_model(settings: dict[str, Any]) -> str:
    """The model name requests carry (the embedded server serves smol under its own name)."""
    return EMBEDDED_MODEL if settings["kind"] == "embedded" else settings["model"]


# The embedded model in batch mode has no server: its lane is named by this placeholder URL
# and its batches run through vllm run_batch (fgrft.generation.local_batch).
EMBEDDED_BATCH_URL = "http://embedded-batch.invalid/v1"


def endpoint(role: str, settings: dict[str, Any], *, base_url: str | None = None,
             model: str | None = None, cache_scope: str = "", name: str = "") -> EndpointSettings:
    base_url = base_url or settings.get("base_url")
    if not base_url:
        raise ConfigError(f"{role}.base_url must be set for kind={settings['kind']}")
    extra = {k: settings[k] for k in _ENDPOINT_KEYS if settings.get(k) is not None}
    return EndpointSettings(base_url=base_url, model=model or served_model(settings),
                          kind="openai" if settings["kind"] == "openai" else "vllm",
                          structured=settings["structured"],
                          name=name or role, cache_scope=cache_scope, **extra)


@dataclass
class RoleEndpoints:
    settings: dict[str, dict[str, Any]]        # role -> its group's keys
    endpoints: dict[str, EndpointSettings]     # role -> endpoint
    fallback: EndpointSettings | None = None
    fallback_temperature: float | None = None
    after_failures: int = 3
    # lane key -> the Files/Batches client of a lane not served by a provider (embedded batch)
    batch_clients: dict = field(default_factory=dict)


@contextlib.contextmanager
def open_endpoints(cfg: DictConfig, run_dir: Path) -> Iterator[RoleEndpoints]:
    settings = {role: role_settings(cfg, role) for role in ROLES}
    server = None
    try:
        scope = ""
        embedded = [s for s in settings.values() if s["kind"] == "embedded"]
        batch_clients: dict = {}
        if embedded:
            model_dir, scope = _embedded_model(cfg)
            if any(s.get("mode", "sync") == "sync" for s in embedded):
                server = _start_embedded(model_dir, run_dir)
        endpoints = {}
        for role, s in settings.items():
            if s["kind"] == "embedded":
                # A role in batch mode shares the embedded lane (the server's, if the other
                # role needs one) and sends its rows to vllm run_batch instead.
                url = server.base_url if server is not None else EMBEDDED_BATCH_URL
                endpoints[role] = endpoint(role, s, base_url=url, cache_scope=scope)
                if s.get("mode") == "batch":
                    from fgrft.generation.local_batch import LocalBatchAPI

                    key = endpoints[role].lane_key
                    batch_clients.setdefault(key, LocalBatchAPI(
                        model_dir, workdir=Path(cfg.paths.cache) / "local_batches",
                        log_path=run_dir / "batch.log"))
            else:
                endpoints[role] = endpoint(role, s)
        backends = RoleEndpoints(settings=settings, endpoints=endpoints, batch_clients=batch_clients)
        fb = settings["verifier"].get("fallback")
        if fb:
            if settings["verifier"]["kind"] == "embedded":
                raise ConfigError("verifier.fallback names a second model, which the embedded "
                                  "server does not serve; set verifier.fallback=null")
            backends.fallback = endpoint("verifier", settings["verifier"], model=fb["model"],
                                         name="verifier_fallback")
            backends.fallback_temperature = fb.get("temperature")
            backends.after_failures = int(fb.get("after_failures", 3))
            if backends.after_failures < 0:
                raise ConfigError("verifier.fallback.after_failures must be >= 0")
        yield backends
    finally:
        if server is not None:
            server.stop()


def _embedded_model(cfg: DictConfig) -> tuple[Path, str]:
    from fgrft.models import build_info, ensure_built

    model_dir = ensure_built(EMBEDDED_MODEL, cfg.paths.cache)
    # The served name is always "smol": the build recipe goes into every cache key instead,
    # so a rebuilt model never answers from an older build's cached responses.
    recipe = (build_info(EMBEDDED_MODEL, cfg.paths.cache) or {}).get("recipe")
    return Path(model_dir), "embedded:" + json.dumps(recipe, sort_keys=True)


def _start_embedded(model_dir: Path, run_dir: Path):
    from fgrft.models.server import EmbeddedServer

    return EmbeddedServer(model_dir, log_path=run_dir / "server.log").start()
