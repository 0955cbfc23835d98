"""``evaluate_after=true``: evaluate the final checkpoint as a nested child of the training run.

The train config already carries the evaluation groups (benchmark,
temperature, inference, scorer, prompt); they are composed into an evaluate
config with ``model.path`` set to the checkpoint and run through the same
job function ``python -m fgrft.evaluate`` uses, in ``<run>/evaluation``. That
function is handed in by the entrypoint (``fgrft.train``): training never
imports the evaluation package.
Re-running reattaches to the same child run, and evaluation resumes from the
completions it already has.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from fgrft.records import METRICS_FILE, PREDICTIONS_FILE, SCORER_AUDIT_FILE

EVAL_DIR = "evaluation"
_KEYS = ("paths", "scale", "experiment_name", "model", "benchmark", "temperature", "inference", "scorer", "prompt")
_INHERITED_TAGS = ("sweep_id", "git_commit", "git_dirty", "overrides", "host")
# The evaluation job: (evaluate config, tracked run) -> metrics, as fgrft.evaluation.job.run_evaluation.
EvaluationJob = Callable[[DictConfig, Any], dict[str, Any]]


def evaluate_checkpoint(cfg: DictConfig, checkpoint: Path, run_dir: Path, evaluate: EvaluationJob) -> dict[str, Any]:
    import mlflow

    from fgrft.config import CONF_DIR, validate
    from fgrft.run_names import run_name
    from fgrft.tracking import NOTE_TAG, RUN_ID_FILE, JobInfo, TrackedRun, config_params

    # The evaluate entrypoint's own keys (resume, dry_run, ...) as conf/evaluate.yaml sets them.
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "evaluate.yaml"))
    container = {k: v for k, v in own.items() if k not in ("defaults", "hydra")}
    container.update({k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                      for k in _KEYS})
    container["model"]["path"] = str(checkpoint)
    eval_cfg = validate(OmegaConf.create(container), "evaluate")
    eval_dir = run_dir / EVAL_DIR
    eval_dir.mkdir(parents=True, exist_ok=True)

    parent = mlflow.active_run()
    id_file = eval_dir / RUN_ID_FILE
    previous = id_file.read_text().strip() if id_file.is_file() else None
    # The parent's experiment, named: without it a nested run lands in the active (Default) experiment.
    experiment = parent.info.experiment_id if parent is not None and previous is None else None
    with mlflow.start_run(run_id=previous, nested=True, run_name=run_name("evaluate", eval_cfg),
                          experiment_id=experiment, log_system_metrics=True) as child:
        id_file.write_text(child.info.run_id)
        tags = mlflow.get_run(parent.info.run_id).data.tags if parent is not None else {}
        note = f"{tags[NOTE_TAG]}  # evaluate_after=true: this run evaluates its checkpoint" \
            if NOTE_TAG in tags else ""
        mlflow.set_tags({**{k: tags[k] for k in _INHERITED_TAGS if k in tags}, "stage": "evaluate",
                         "run_dir": str(eval_dir), **({NOTE_TAG: note} if note else {})})
        tracked = TrackedRun(run_id=child.info.run_id,
                             job=JobInfo(stage="evaluate", run_dir=eval_dir, sweep_dir=None))
        tracked.log_params(config_params(eval_cfg))
        metrics = evaluate(eval_cfg, tracked)
        for name in (PREDICTIONS_FILE, METRICS_FILE, SCORER_AUDIT_FILE):
            if (eval_dir / name).is_file():
                tracked.log_artifact(eval_dir / name)
    return metrics["overall"]
