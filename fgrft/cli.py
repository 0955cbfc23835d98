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


def hydra_entry(stage: str, job_fn: JobFn) -> Callable[[], Any]:
    """A Hydra app for `stage` that runs `job_fn` inside the tracked task wrapper."""
    register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        return run_stage(stage, cfg, job_fn)

    def main() -> Any:
        result = _main()
        if tracking.failed_sweeps:
            sys.exit(1)
        return result

    return main
