"""MLflow tracking: one run per Hydra job, a parent run per multirun, secrets kept out.

* The store is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<root>/mlflow.db`` with
  artifacts under ``<root>/mlruns``; it is created once under a file lock so
  parallel jobs never race on the schema.
* A job's run id is kept in its run directory (``mlflow_run_id``): re-running
  the same command reattaches to that run instead of opening a second one.
* A multirun opens a parent run (id kept in the sweep directory); each job is a
  nested child. Every run carries the tags of CONTRACTS.md.
* Secrets are masked from params, tags, logged files and log records by the
  one rule of :mod:`fgrft.secrets`.
* :func:`job_run` always closes the run, as FAILED when the job raised. A run it
  opened for a job that stopped on a user error (:data:`fgrft.errors.USER_ERRORS`,
  raised before any work starts) is deleted with its id file: the store keeps no
  half-made run and the fixed command opens a fresh one.

The Hydra app and the task wrapper that validates, scales and runs a job are in
:mod:`fgrft.app`.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fgrft.config.resolvers import short_hash
from fgrft.errors import USER_ERRORS
from fgrft.records import CONFIG_FILE
from fgrft.run_names import command_line, run_name, sweep_name
from fgrft.secrets import redact, redact_obj, register_secret_envs

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
PARENT_RUN_ID_FILE = "mlflow_parent_run_id"
# Subprocesses (training ranks, engines) attach to the job's run through these.
ENV_RUN_ID = "FGRFT_MLFLOW_RUN_ID"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
# The run's description in the MLflow UI: the command that reproduces the run.
NOTE_TAG = "mlflow.note.content"
SYSTEM_METRICS_STAGES = ("train", "evaluate")
# MLflow rejects longer param values.
_MAX_PARAM_LEN = 6000


# --------------------------------------------------------------------------- store
def tracking_uri(root: str | Path) -> str:
    return os.environ.get(ENV_TRACKING_URI) or f"sqlite:///{Path(root) / 'mlflow.db'}"


def artifact_root(root: str | Path) -> str:
    return (Path(root) / "mlruns").as_uri()


def ensure_store(root: str | Path) -> str:
    """Point MLflow at the store, creating the local database once (under a lock)."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db.parent / f".{db.name}.lock")):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    return uri


def experiment_id(name: str, root: str | Path) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    with FileLock(str(Path(root) / ".mlflow-experiments.lock")):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name, artifact_location=f"{artifact_root(root)}/{name}")


# --------------------------------------------------------------------------- tags/params
@lru_cache(maxsize=1)
def git_state() -> tuple[str, str]:
    """(commit, dirty) of the checkout holding the fgrft package, or unknown."""
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(src), "status", "--porcelain"], capture_output=True,
                                text=True, timeout=10, check=True).stdout
        return commit, str(bool(status.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(node, list) and node and all(isinstance(v, Mapping) for v in node):
        for i, v in enumerate(node):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = node
    return out


def config_params(cfg: DictConfig) -> dict[str, str]:
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return {k: redact(str(v))[:_MAX_PARAM_LEN] for k, v in flatten(container).items()}


# --------------------------------------------------------------------------- job context
@dataclass
class JobInfo:
    """Where a job runs and how it groups, read from Hydra's runtime config."""

    stage: str
    run_dir: Path
    sweep_dir: Path | None
    overrides: list[str] = field(default_factory=list)
    hydra_overrides: list[str] = field(default_factory=list)

    @property
    def sweep_id(self) -> str:
        return short_hash(str(self.sweep_dir or self.run_dir))

    @property
    def is_multirun(self) -> bool:
        return self.sweep_dir is not None


def current_job(stage: str) -> JobInfo:
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir).resolve() if hc.mode == RunMode.MULTIRUN else None
    return JobInfo(stage=stage, run_dir=Path(hc.runtime.output_dir).resolve(), sweep_dir=sweep_dir,
                   overrides=list(hc.overrides.task), hydra_overrides=list(hc.overrides.hydra))


@dataclass
class TrackedRun:
    """Handle a stage uses to log into its job's run."""

    run_id: str
    job: JobInfo

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        clean = {k: redact(str(v))[:_MAX_PARAM_LEN] for k, v in params.items() if v is not None}
        try:
            mlflow.log_params(clean)
        except Exception as e:  # a reattached run may already hold different values
            log.warning("some params were not logged again: %s", str(e).splitlines()[0])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def subprocess_env(self) -> dict[str, str]:
        """Environment that lets a child process attach to this run."""
        import mlflow

        return {**os.environ, ENV_RUN_ID: self.run_id, ENV_TRACKING_URI: mlflow.get_tracking_uri()}


def _existing_run_id(path: Path) -> str | None:
    import mlflow

    if not path.is_file():
        return None
    run_id = path.read_text().strip()
    try:
        mlflow.MlflowClient().get_run(run_id)
        return run_id
    except Exception:
        return None


def _tags(job: JobInfo) -> dict[str, str]:
    commit, dirty = git_state()
    return {
        "stage": job.stage,
        "sweep_id": job.sweep_id,
        "git_commit": commit,
        "git_dirty": dirty,
        "overrides": redact(" ".join(job.overrides)),
        "host": socket.gethostname(),
        "run_dir": str(job.run_dir),
    }


@contextmanager
def job_run(cfg: DictConfig, job: JobInfo) -> Iterator[TrackedRun]:
    """Open (or reattach to) the job's MLflow run; always close it."""
    import mlflow

    root = cfg.paths.root
    ensure_store(root)
    exp_id = experiment_id(cfg.experiment_name, root)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    id_file = job.run_dir / RUN_ID_FILE
    run_id = _existing_run_id(id_file)
    parent_id = None
    if job.sweep_dir is not None:
        parent_id = _existing_run_id(job.sweep_dir / PARENT_RUN_ID_FILE)
    name = run_name(job.stage, cfg)
    # CPU and memory (and GPU with nvidia-ml-py) beside the stages that load models.
    system_metrics = job.stage in SYSTEM_METRICS_STAGES
    if run_id:
        active = mlflow.start_run(run_id=run_id, run_name=name, log_system_metrics=system_metrics)
        log.info("reattached to MLflow run %s", run_id)
    else:
        active = mlflow.start_run(experiment_id=exp_id, run_name=name, parent_run_id=parent_id,
                                  log_system_metrics=system_metrics)
        id_file.write_text(active.info.run_id)
    tracked = TrackedRun(run_id=active.info.run_id, job=job)
    status = "FAILED"
    discard = False
    try:
        mlflow.set_tags({**_tags(job), NOTE_TAG: redact(
            command_line(job.stage, job.overrides, job.hydra_overrides))})
        tracked.log_params(config_params(cfg))
        _write_config(cfg, job.run_dir)
        yield tracked
        status = "FINISHED"
    except USER_ERRORS:
        discard = not run_id and not _recorded_work(tracked.run_id)
        raise
    finally:
        try:
            if not discard:
                _log_run_dir(job.run_dir)
        finally:
            mlflow.end_run(status=status)
            if discard:
                mlflow.MlflowClient().delete_run(tracked.run_id)
                id_file.unlink(missing_ok=True)
                log.info("deleted MLflow run %s: the job stopped on a user error before any work", tracked.run_id)


def _recorded_work(run_id: str) -> bool:
    """Whether the run holds results: a metric of the job's own, an artifact or a dataset input.
    Such a run is kept (FAILED) when a later step stops on a user error."""
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if any(not key.startswith("system/") for key in run.data.metrics):
        return True
    if run.inputs is not None and run.inputs.dataset_inputs:
        return True
    return bool(client.list_artifacts(run_id))


def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(redact_obj(container)))


def _log_run_dir(run_dir: Path) -> None:
    """The run directory's files at the artifact root, under the same names."""
    import mlflow

    for path in sorted(run_dir.iterdir()):
        if path.is_file() and path.name != RUN_ID_FILE and not path.name.endswith(".lock"):
            if path.suffix == ".log":
                # Logs pass through the redacting filter already; redact again in case
                # a library wrote to the file handler without it.
                with tempfile.TemporaryDirectory() as tmp:
                    clean = Path(tmp) / path.name
                    clean.write_text(redact(path.read_text(errors="replace")))
                    mlflow.log_artifact(str(clean))
            else:
                mlflow.log_artifact(str(path))


@contextmanager
def attach_run() -> Iterator[str | None]:
    """For subprocesses: attach to the job's run named in the environment, if any."""
    import mlflow

    run_id = os.environ.get(ENV_RUN_ID)
    if not run_id:
        yield None
        return
    with mlflow.start_run(run_id=run_id):
        yield run_id


# --------------------------------------------------------------------------- sweeps
# Sweeps of this process that ended with failed jobs.
failed_sweeps: list[str] = []


class SweepTrackingCallback(Callback):
    """Opens the parent run of a multirun and closes it when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        register_secret_envs(config)
        root = config.paths.root
        ensure_store(root)
        exp_id = experiment_id(config.experiment_name, root)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        id_file = sweep_dir / PARENT_RUN_ID_FILE
        run_id = _existing_run_id(id_file)
        client = mlflow.MlflowClient()
        stage = config.hydra.job.name
        name = sweep_name(stage, config.experiment_name)
        if run_id is None:
            run = client.create_run(exp_id, run_name=name)
            run_id = run.info.run_id
            id_file.write_text(run_id)
        else:
            client.update_run(run_id, status="RUNNING")
        job = JobInfo(stage=stage, run_dir=sweep_dir, sweep_dir=sweep_dir,
                      overrides=list(config.hydra.overrides.task),
                      hydra_overrides=list(config.hydra.overrides.hydra))
        note = redact(command_line(stage, job.overrides, job.hydra_overrides, multirun=True))
        for k, v in {**_tags(job), "sweep_parent": "true", NOTE_TAG: note}.items():
            client.set_tag(run_id, k, v)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        run_id = _existing_run_id(sweep_dir / PARENT_RUN_ID_FILE)
        if run_id is None:
            return
        client = mlflow.MlflowClient()
        children = client.search_runs(
            [client.get_run(run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        )
        failed = [c for c in children if c.info.status == "FAILED"]
        client.update_run(run_id, name=sweep_name(config.hydra.job.name, config.experiment_name,
                                                  len(children)))
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
        if failed:
            names = ", ".join(c.info.run_name for c in failed)
            log.error("%d of %d jobs of this sweep failed: %s", len(failed), len(children), names)
            # Every job ran; the command still has to fail so scripts notice
            # (Hydra swallows exceptions from callbacks, so the entrypoint checks this).
            failed_sweeps.append(names)
