"""MLflow runs -> :class:`EvalRun` records.

Which runs count as evaluations:

* runs tagged ``stage=evaluate`` (not a multirun's parent), and
* nested evaluation children of training runs (``evaluate_after=true``):
  runs whose parent is a training job and that logged a scorer or an overall
  accuracy, whatever their own stage tag says.

Only FINISHED runs are read; the others are listed as skipped with the reason,
as are runs whose artifacts are missing. A fine-tuned checkpoint's data arm
comes from the training run (the parent, or the run named by the
``train_run_id`` lineage param) when the evaluation itself does not say.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fgrft.records import METRICS_FILE, PREDICTIONS_FILE, Prediction, read_jsonl
from fgrft.reporting.eval_runs import EvalRun, eval_run_from_logged, other_scorer_view

log = logging.getLogger(__name__)

_PAGE = 1000


@dataclass
class Collection:
    runs: list[EvalRun] = field(default_factory=list)
    # The same runs read by the other scorer (from by_scorer): tables and paired tests for
    # both scorers without a second generation.
    rescored: list[EvalRun] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run, reason)
    experiments: list[str] = field(default_factory=list)
    missing_experiments: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _all_runs(client: Any, experiment_ids: list[str]) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class _Runs:
    """Runs by id, fetching ones outside the searched experiments on demand."""

    def __init__(self, client: Any, runs: Iterable[Any]):
        self.client = client
        self.by_id = {r.info.run_id: r for r in runs}

    def get(self, run_id: str | None) -> Any | None:
        if not run_id:
            return None
        if run_id not in self.by_id:
            try:
                self.by_id[run_id] = self.client.get_run(run_id)
            except Exception:  # deleted, or in another store: the caller copes without it
                self.by_id[run_id] = None
        return self.by_id[run_id]

    def parent(self, run: Any) -> Any | None:
        return self.get(run.data.tags.get("mlflow.parentRunId"))


def _is_training_job(run: Any | None) -> bool:
    return (run is not None and run.data.tags.get("stage") == "train"
            and run.data.tags.get("sweep_parent") != "true")


def is_evaluation(run: Any, runs: _Runs) -> bool:
    tags = run.data.tags
    if tags.get("sweep_parent") == "true":
        return False
    if tags.get("stage") == "evaluate":
        return True
    logged_scores = "scorer" in run.data.params or "accuracy/overall" in run.data.metrics
    return logged_scores and _is_training_job(runs.parent(run))


def in_sweep(run: Any, sweep_id: str, runs: _Runs) -> bool:
    """Tagged with the sweep, or nested (at any depth) under a run that is."""
    seen = set()
    while run is not None and run.info.run_id not in seen:
        if run.data.tags.get("sweep_id") == sweep_id:
            return True
        seen.add(run.info.run_id)
        run = runs.parent(run)
    return False


def training_params(run: Any, runs: _Runs) -> dict[str, str] | None:
    parent = runs.parent(run)
    if _is_training_job(parent):
        return dict(parent.data.params)
    trained = runs.get(run.data.params.get("train_run_id"))
    return dict(trained.data.params) if trained is not None else None


def _artifact_names(client: Any, run_id: str) -> set[str]:
    try:
        return {a.path for a in client.list_artifacts(run_id)}
    except Exception as e:  # an unreachable artifact store: the run is reported without files
        log.warning("run %s: cannot list artifacts: %s", run_id, e)
        return set()


def read_predictions(path: Path) -> list[Prediction]:
    return [Prediction.from_dict(obj) for _, obj in read_jsonl(path)]


def load_run(client: Any, run: Any, runs: _Runs, experiment: str, workdir: Path) -> list[EvalRun]:
    """The run as its configured scorer read it, and as the other scorer read the same outputs
    (when its metrics.json has ``by_scorer``)."""
    run_id = run.info.run_id
    dst = workdir / run_id
    dst.mkdir(parents=True, exist_ok=True)
    names = _artifact_names(client, run_id)

    def fetch(name: str) -> Path | None:
        return Path(client.download_artifacts(run_id, name, str(dst))) if name in names else None

    metrics_path, predictions_path = fetch(METRICS_FILE), fetch(PREDICTIONS_FILE)
    metrics_doc = json.loads(metrics_path.read_text()) if metrics_path else None
    rows = [obj for _, obj in read_jsonl(predictions_path)] if predictions_path else None
    predictions = [Prediction.from_dict(obj) for obj in rows] if rows is not None else None
    configured = eval_run_from_logged(
        run_id=run_id, name=run.info.run_name or run_id, experiment=experiment,
        params=run.data.params, tags=run.data.tags, metrics_doc=metrics_doc, predictions=predictions,
        train_params=training_params(run, runs))
    other = other_scorer_view(configured, metrics_doc, rows)
    return [configured] if other is None else [configured, other]


def collect_runs(client: Any, experiment_names: list[str] | None, sweep_id: str | None,
                 workdir: Path) -> Collection:
    """Evaluation runs of the named experiments (all experiments when None), optionally one sweep."""
    out = Collection()
    if experiment_names is None:
        experiments = list(client.search_experiments())
    else:
        experiments = []
        for name in experiment_names:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                out.missing_experiments.append(name)
            else:
                experiments.append(exp)
    out.experiments = [e.name for e in experiments]
    if not experiments:
        return out
    names = {e.experiment_id: e.name for e in experiments}
    all_runs = _all_runs(client, list(names))
    runs = _Runs(client, all_runs)
    other_sweeps: set[str] = set()
    # Oldest first, so tables list replicates in the order they ran.
    for run in sorted(all_runs, key=lambda r: r.info.start_time or 0):
        if not is_evaluation(run, runs):
            continue
        if sweep_id and not in_sweep(run, sweep_id, runs):
            other_sweeps.add(run.data.tags.get("sweep_id", "?"))
            continue
        described = f"{run.info.run_name} ({run.info.run_id[:8]}, experiment {names[run.info.experiment_id]})"
        if run.info.status != "FINISHED":
            out.skipped.append((described, f"status {run.info.status}"))
            continue
        try:
            configured, *other = load_run(client, run, runs, names[run.info.experiment_id], workdir)
            out.runs.append(configured)
            out.rescored.extend(other)
        except Exception as e:  # one broken run must not hide the others
            out.skipped.append((described, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if sweep_id and not out.runs and not out.skipped:
        # Hydra reads an all-digit (or "1e5"-like) id as a number: a likely reason for no match.
        out.notes.append(f"no evaluation run belongs to sweep {sweep_id!r}; sweep ids of the evaluation runs "
                         f"there: {', '.join(sorted(other_sweeps)) or 'none'} (quote a numeric-looking id: "
                         f"sweep_id=\"'0123'\")")
    return out
