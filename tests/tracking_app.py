"""A Hydra app on the real entrypoint machinery with a trivial job, for tracking tests.

Run as `python -m tests.tracking_app [overrides]` with the repository on PYTHONPATH.
FGRFT_TEST_FAIL_ON=<text> makes jobs whose overrides contain <text> raise;
FGRFT_TEST_USER_ERROR_ON=<text> makes them raise a user error (ConfigError) instead, before they
log anything; FGRFT_TEST_USER_ERROR_AFTER_WORK_ON=<text>, after their metrics are logged.
"""
import json
import logging
import os

from fgrft.app import hydra_entry
from fgrft.errors import ConfigError

log = logging.getLogger("tests.tracking_app")


def job(cfg, run):
    overrides = " ".join(run.job.overrides)
    log.info("job running with overrides %s", overrides)
    for name in os.environ.get("FGRFT_TEST_ECHO_ENV", "").split(","):
        if name:  # a careless stage logging a secret must still be redacted
            log.info("env %s=%s", name, os.environ.get(name))
    user_error_on = os.environ.get("FGRFT_TEST_USER_ERROR_ON")
    if user_error_on and user_error_on in overrides:
        raise ConfigError(f"temperature.temperature: scripted user error for {overrides}")
    counter = run.job.run_dir / "runs.txt"
    counter.write_text(counter.read_text() + "x" if counter.exists() else "x")
    (run.job.run_dir / "metrics.json").write_text(json.dumps({"temperature": cfg.temperature.temperature}))
    run.log_metrics({"accuracy/overall": cfg.temperature.temperature})
    after_work_on = os.environ.get("FGRFT_TEST_USER_ERROR_AFTER_WORK_ON")
    if after_work_on and after_work_on in overrides:
        raise ConfigError(f"temperature.temperature: scripted user error after work for {overrides}")
    fail_on = os.environ.get("FGRFT_TEST_FAIL_ON")
    if fail_on and fail_on in overrides:
        raise RuntimeError(f"scripted failure for {overrides}")
    return cfg.temperature.temperature


main = hydra_entry("evaluate", job)

if __name__ == "__main__":
    main()
