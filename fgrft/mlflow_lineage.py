"""Lineage and per-item views in MLflow: datasets as run inputs, checkpoints as models, tables.

* :func:`log_dataset` records what a run read or wrote (benchmark items, training records,
  Stage 1 questions and records) with ``mlflow.log_input``: name, source (a file or a hub id),
  digest (the project's own hash of the items) and the item count (the dataset's profile).
* :func:`register_checkpoint` makes a training run's final checkpoint an MLflow 3 *external*
  logged model: MLflow keeps its params and links, the weights stay in the checkpoint
  directory (tag ``checkpoint``), nothing is copied.
* :func:`checkpoint_model_id` finds that model again from the checkpoint's training run, so an
  evaluation can name it as an input and log its metrics against it (the model page then
  lists every evaluation of the checkpoint).
* :func:`log_table` logs rows as an MLflow table artifact.

All of this is a view of files the run directory already holds: it is logged into the
active run only (a job run without one, as in-process tests do, logs nothing), and if MLflow
refuses a call the run goes on with a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

# Contexts of the datasets a run logs (CONTRACTS.md, "Names added in round 2").
EVAL, TRAINING, SOURCE, RECORDS = "eval", "training", "source", "records"
MODEL_TYPE = "fgrft-checkpoint"
CHECKPOINT_TAG = "checkpoint"


def _source(origin: str | None, hub: bool = False) -> Any:
    """A hub id (``hub=True``), or a file path/URL, as an MLflow dataset source."""
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    if not origin:
        return CodeDatasetSource({"origin": "unknown"})
    if hub:
        return HuggingFaceDatasetSource(path=origin)
    try:
        with warnings.catch_warnings():  # a local path matches two equivalent source kinds
            warnings.simplefilter("ignore")
            return resolve_dataset_source(str(Path(origin).resolve()) if Path(origin).exists() else origin)
    except Exception:  # noqa: BLE001 - a label such as "data=sample"
        return CodeDatasetSource({"origin": origin})


def dataset(name: str, origin: str | None, digest: str, ids: Sequence[str],
            sources: Sequence[str] | None = None, hub: bool = False) -> Any:
    """An MLflow dataset of the item ids (and their benchmark source): the profile counts them."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame({"id": list(ids)})
    if sources is not None:
        frame["source"] = list(sources)
    return mlflow.data.from_pandas(frame, source=_source(origin, hub), name=name, digest=digest[:36])


def log_dataset(name: str, origin: str | None, digest: str, ids: Sequence[str], context: str,
                sources: Sequence[str] | None = None, hub: bool = False) -> Any:
    """Log the dataset as an input of the active run in ``context``; returns it (or None)."""
    import mlflow

    if mlflow.active_run() is None:
        return None
    try:
        ds = dataset(name, origin, digest, ids, sources, hub)
        mlflow.log_input(ds, context=context)
        return ds
    except Exception as e:  # noqa: BLE001 - a view, never a reason to fail the run
        log.warning("dataset %s (%s) not logged to MLflow: %s", name, context, str(e).splitlines()[0])
        return None


def register_checkpoint(checkpoint: str | Path, name: str, lineage: Mapping[str, Any],
                        run_id: str) -> str | None:
    """The checkpoint as an external logged model of ``run_id`` (created once per run)."""
    import mlflow

    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return None
    try:
        existing = checkpoint_model_id(run_id)
        if existing is not None:
            return existing
        model = mlflow.create_external_model(
            name=name, source_run_id=run_id, model_type=MODEL_TYPE,
            params={k: str(v) for k, v in lineage.items() if v is not None},
            tags={CHECKPOINT_TAG: str(Path(checkpoint).resolve())})
        return model.model_id
    except Exception as e:  # noqa: BLE001
        log.warning("checkpoint %s not registered as an MLflow model: %s", checkpoint, str(e).splitlines()[0])
        return None


def checkpoint_model_id(train_run_id: str | None) -> str | None:
    """The logged model a training run registered for its checkpoint, if any."""
    if not train_run_id:
        return None
    import mlflow

    try:
        client = mlflow.MlflowClient()
        experiment = client.get_run(train_run_id).info.experiment_id
        found = client.search_logged_models(
            experiment_ids=[experiment],
            filter_string=f"source_run_id = '{train_run_id}' AND model_type = '{MODEL_TYPE}'",
            max_results=1)
        return found[0].model_id if found else None
    except Exception as e:  # noqa: BLE001 - another store, a deleted run
        log.debug("no logged model for run %s: %s", train_run_id, e)
        return None


def link_model(model_id: str, metrics: Mapping[str, float], ds: Any = None) -> None:
    """Name the model as an input of the active run and log ``metrics`` against it."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    if mlflow.active_run() is None:
        return
    try:
        mlflow.log_input(model=LoggedModelInput(model_id))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, model_id=model_id,
                           dataset=ds)
    except Exception as e:  # noqa: BLE001
        log.warning("evaluation not linked to model %s: %s", model_id, str(e).splitlines()[0])


def log_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], artifact_file: str) -> None:
    """``rows`` (the named columns, in order; nested values as JSON text) as an MLflow table."""
    import json

    import mlflow
    import pandas as pd

    def cell(value: Any) -> Any:
        return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value

    if mlflow.active_run() is None:
        return
    frame = pd.DataFrame([{c: cell(row.get(c)) for c in columns} for row in rows], columns=list(columns))
    try:
        mlflow.log_table(frame, artifact_file=artifact_file)
    except Exception as e:  # noqa: BLE001
        log.warning("table %s not logged to MLflow: %s", artifact_file, str(e).splitlines()[0])
