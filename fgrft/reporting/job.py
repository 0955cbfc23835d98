"""The report job: read evaluation runs from MLflow, write tables, CSVs and plots to the run dir.

The tracking layer logs the run directory's files as artifacts when the job
ends, so everything written here lands in MLflow too.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fgrft.reporting.assemble import Report, build_report
from fgrft.reporting.claims import default_claims_path, load_claims
from fgrft.reporting.collect import collect_runs
from fgrft.reporting.plots import write_plots
from fgrft.reporting.render import write_all
from fgrft.tracking import TrackedRun

log = logging.getLogger(__name__)

# Files a previous report wrote into the same run directory (the same command
# reuses it); removed first so a plot of a table that is gone does not linger.
_OUTPUT_GLOBS = ("tables.md", "tables.csv", "paired.csv", "accuracy_*.png", "paired_*.png")


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def experiments_to_read(cfg: DictConfig, overrides: list[str]) -> list[str] | None:
    """`experiments` if given; all experiments when only `sweep_id` is; else `experiment_name`."""
    if cfg.experiments:
        return list(cfg.experiments)
    if cfg.sweep_id and not _overridden(overrides, "experiment_name"):
        return None
    return [cfg.experiment_name]


def _clean(run_dir: Path) -> None:
    for pattern in _OUTPUT_GLOBS:
        for path in run_dir.glob(pattern):
            path.unlink()


def report_job(cfg: DictConfig, tracked: TrackedRun) -> dict[str, Any]:
    import mlflow

    run_dir = tracked.job.run_dir
    names = experiments_to_read(cfg, tracked.job.overrides)
    claims_path = Path(cfg.claims) if cfg.claims else default_claims_path(cfg.paths.root)
    if cfg.claims and not claims_path.is_file():
        raise FileNotFoundError(f"claims file {claims_path} does not exist")
    claims = load_claims(claims_path) if claims_path else []
    if not claims:
        log.warning("no claims file found (experiments/claims.yaml): the report shows no deltas to the thesis")

    # One progress bar per downloaded artifact would bury the log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="fgrft-report-") as tmp:
        collection = collect_runs(client, names, cfg.sweep_id, Path(tmp))
    report = build_report(collection, claims, claims_path=claims_path, sweep_id=cfg.sweep_id,
                          n_resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed)

    _clean(run_dir)
    written = write_all(report, run_dir) + write_plots(report, run_dir)
    summary = _summary(report)
    tracked.log_params({"experiments_read": ",".join(collection.experiments) or "none",
                        "claims_file": str(claims_path) if claims_path else "none"})
    tracked.log_metrics({f"report/{k}": v for k, v in summary.items()})
    _log_summary(report, summary, names, written)
    return summary


def _summary(report: Report) -> dict[str, int]:
    compared = [c for c in report.checks if c.status == "compared"]
    return {
        "runs": len(report.collection.runs),
        "skipped_runs": len(report.collection.skipped),
        "claims": len(report.claims),
        "claims_compared": len({c.claim.id for c in compared}),
        "claims_within_tolerance": len({c.claim.id for c in compared if c.within_tolerance}),
        "claims_missing": len(report.missing),
        "paired_compared": len(report.paired.compared),
        "paired_refused": len(report.paired.refused),
    }


def _log_summary(report: Report, summary: dict[str, int], names: list[str] | None, written: list[Path]) -> None:
    where = ", ".join(names) if names is not None else "all experiments"
    log.info("read %d evaluation runs from %s (%d skipped)", summary["runs"], where, summary["skipped_runs"])
    for who, why in report.collection.skipped:
        log.warning("skipped %s: %s", who, why)
    for note in report.collection.notes:
        log.warning("%s", note)
    if report.collection.missing_experiments:
        log.warning("experiments not found: %s", ", ".join(report.collection.missing_experiments))
    log.info("claims: %d compared (%d within tolerance), %d without a comparable full-scale run",
             summary["claims_compared"], summary["claims_within_tolerance"], summary["claims_missing"])
    for r in report.paired.refused:
        log.warning("not compared: %s vs %s: %s", r.a_label, r.b_label, r.reason)
    if any(r.scale == "toy" for r in report.collection.runs):
        log.warning("toy-scale runs are in this report: their numbers and deltas mean nothing")
    log.info("wrote %s", ", ".join(p.name for p in written))
