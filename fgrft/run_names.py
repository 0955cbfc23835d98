"""What an MLflow run is called, and the command that reproduces it.

The run directory keeps its override-derived name (it is the resume key); the run's *name* is
for the runs table, so it says what tells runs apart and nothing else:

    evaluate llama31_8b_instruct+fgrft_5k t0.5 strict
    evaluate smol greedy thesis replay:gpt4o_medmcqa
    train smol fgrft_5k seed42
    generate thesis gpt-4o/gpt-5
    report demo
    sweep evaluate temperature_sweep (2 jobs)

``+ARM`` is the training data label of a fine-tuned checkpoint (read from its training run);
`` toy`` ends the name of a ``scale=toy`` run.
"""
from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig

from fgrft.records import LINEAGE_FILE

log = logging.getLogger(__name__)

# Hydra adds these itself in a multirun; they are not part of what the user typed.
_HYDRA_INTERNAL = ("hydra.mode=", "hydra.job.num=", "hydra.job.id=")


def temperature_label(temperature: float, n_samples: int = 1) -> str:
    label = "greedy" if float(temperature) == 0 else f"t{float(temperature):g}"
    return label if n_samples <= 1 else f"{label}x{n_samples}"


def checkpoint_lineage(model_path: str | None) -> dict[str, Any]:
    """The lineage a fine-tuned checkpoint carries, or {} for any other model."""
    if not model_path:
        return {}
    try:
        return json.loads((Path(model_path) / LINEAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def training_arm(lineage: dict[str, Any]) -> str | None:
    """The data label the checkpoint was trained on, from its training run's params."""
    run_id = lineage.get("train_run_id")
    if not run_id:
        return None
    try:
        import mlflow

        return mlflow.MlflowClient().get_run(run_id).data.params.get("data_label") or "ft"
    except Exception:  # another store, or a deleted run: still say it is fine-tuned
        return "ft"


def run_name(stage: str, cfg: DictConfig) -> str:
    name = _STAGE_NAMES.get(stage, lambda c: stage)(cfg)
    return f"{name} toy" if cfg.get("scale") == "toy" else name


def _evaluate(cfg: DictConfig) -> str:
    model = cfg.model.name
    arm = training_arm(checkpoint_lineage(cfg.model.get("path")))
    if arm:
        model = f"{model}+{arm}"
    t = cfg.temperature
    parts = ["evaluate", model, temperature_label(t.temperature, t.get("n_samples", 1)), cfg.scorer.name]
    if cfg.inference.backend == "replay":
        parts.append(f"replay:{Path(str(cfg.inference.path)).stem}")
    return " ".join(str(p) for p in parts)


def _train(cfg: DictConfig) -> str:
    return f"train {cfg.model.name} {cfg.data.name} seed{cfg.trainer.seed}"


def _generate(cfg: DictConfig) -> str:
    recipe = cfg.get("recipe")
    models = f"{cfg.generator.model}/{cfg.verifier.model}"
    return " ".join(p for p in ("generate", recipe, models) if p)


def _report(cfg: DictConfig) -> str:
    return f"report {cfg.experiment_name}"


_STAGE_NAMES = {"evaluate": _evaluate, "train": _train, "generate": _generate, "report": _report}


def sweep_name(stage: str, experiment: str, jobs: int | None = None) -> str:
    name = f"sweep {stage} {experiment}"
    return name if jobs is None else f"{name} ({jobs} job{'s' if jobs != 1 else ''})"


def command_line(stage: str, overrides: Iterable[str], hydra_overrides: Iterable[str] = (),
                 multirun: bool = False) -> str:
    """``python -m fgrft.STAGE [-m] OVERRIDES``, each override quoted for a POSIX shell."""
    user_hydra = [o for o in hydra_overrides if not o.startswith(_HYDRA_INTERNAL)]
    words = ["python", "-m", f"fgrft.{stage}", *(["-m"] if multirun else []), *overrides, *user_hydra]
    return " ".join(shlex.quote(w) for w in words)
