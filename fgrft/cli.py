"""What every entrypoint shares: config location, resolvers, the task wrapper."""
from __future__ import annotations

import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from fgrft.config import CONF_DIR, register_resolvers
from fgrft import tracking
from fgrft.tracking import TrackedRun, run_stage

JobFn = Callable[[DictConfig, TrackedRun], Any]


def hydra_entry(stage: str, job_fn: JobFn,
                prepare: Callable[[DictConfig, list[str]], DictConfig] | None = None) -> Callable[[], Any]:
    """A Hydra app for `stage` that runs `job_fn` inside the tracked task wrapper.

    ``prepare(cfg, overrides)`` may complete the composed config (before it is
    validated, logged and saved) from what the command line names.
    """
    register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        if prepare is not None:
            from hydra.core.hydra_config import HydraConfig

            cfg = prepare(cfg, list(HydraConfig.get().overrides.task))
        return run_stage(stage, cfg, job_fn)

    def main() -> Any:
        result = _main()
        if tracking.failed_sweeps:
            sys.exit(1)
        return result

    return main
