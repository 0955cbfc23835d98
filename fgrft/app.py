"""The Hydra app every entrypoint is made of, and the task wrapper each job runs in.

    main = hydra_entry("evaluate", run_evaluation, prepare=...)   # in fgrft/evaluate.py

:func:`run_stage` validates the composed config, applies ``scale``, runs the stage's
``check`` (the user errors it can find without doing any work), opens (or reattaches to)
the job's MLflow run (:mod:`fgrft.tracking`) and runs the job. A failure ends the run as
FAILED; in a multirun it is logged and the sweep goes on (the command still exits non-zero).

A user error (:data:`fgrft.errors.USER_ERRORS`: a bad config value, a missing or malformed
file) is printed as one line on stderr, naming the key, file, record or field, and the command
exits 1 without a Python traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from fgrft import tracking
from fgrft.config import CONF_DIR, register_resolvers
from fgrft.errors import USER_ERRORS
from fgrft.secrets import redact, register_secret_envs
from fgrft.tracking import TrackedRun, current_job, job_run

log = logging.getLogger(__name__)

JobFn = Callable[[DictConfig, TrackedRun], Any]
CheckFn = Callable[[DictConfig], None]
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
# One line per job stopped on a user error, printed by the entrypoint when Hydra returns
# (a sweep's jobs each add theirs and the sweep goes on).
user_errors: list[str] = []


def _user_error_line(stage: str, exc: BaseException) -> str:
    return f"fgrft.{stage}: {type(exc).__name__}: {redact(str(exc))}"


def run_stage(stage: str, cfg: DictConfig, job_fn: JobFn, check: CheckFn | None = None) -> Any:
    """Validate, scale, check, track and run one Hydra job.

    A failure ends the run as FAILED. In a multirun it is logged and the sweep
    goes on (the parent run ends FAILED); a single run re-raises.
    """
    from fgrft.config import validate
    from fgrft.config.scale import apply_scale

    job = current_job(stage)
    register_secret_envs(cfg)
    cfg = apply_scale(validate(cfg, stage))
    try:
        if check is not None:  # before the run opens: a refused job leaves nothing in the store
            check(cfg)
        with job_run(cfg, job) as tracked:
            return job_fn(cfg, tracked)
    except USER_ERRORS as exc:
        if not job.is_multirun:
            raise
        user_errors.append(_user_error_line(stage, exc))
        if os.environ.get(FULL_ERROR_ENV) == "1":
            log.error("job %s failed:\n%s", job.run_dir.name, redact(traceback.format_exc()))
        return None
    except Exception:
        if not job.is_multirun:
            raise
        log.error("job %s failed:\n%s", job.run_dir.name, redact(traceback.format_exc()))
        return None


def hydra_entry(stage: str, job_fn: JobFn,
                prepare: Callable[[DictConfig, list[str]], DictConfig] | None = None,
                check: CheckFn | None = None) -> Callable[[], Any]:
    """A Hydra app for ``stage`` that runs ``job_fn`` inside :func:`run_stage`.

    ``prepare(cfg, overrides)`` may complete the composed config (before it is
    validated, logged and saved) from what the command line names; ``check(cfg)``
    raises the user errors it finds in the validated config before the run opens.
    """
    register_resolvers()

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        try:
            if prepare is not None:
                from hydra.core.hydra_config import HydraConfig

                cfg = prepare(cfg, list(HydraConfig.get().overrides.task))
            return run_stage(stage, cfg, job_fn, check)
        except USER_ERRORS as exc:
            if os.environ.get(FULL_ERROR_ENV) == "1":
                raise
            # Raised here, Hydra would print its own traceback: the message leaves through main().
            user_errors.append(_user_error_line(stage, exc))
            return None

    def main() -> Any:
        user_errors.clear()
        result = _main()
        if user_errors:
            # A sweep can stop several jobs on user errors: each gets its line.
            print("\n".join(user_errors), file=sys.stderr)
            sys.exit(1)
        if tracking.failed_sweeps:
            sys.exit(1)
        return result

    return main
