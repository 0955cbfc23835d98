"""The parent side of a distributed job: write the launch files, start the ranks, read rank 0's result.

MLflow: the ranks get ``tracked.subprocess_env()``, so rank 0 attaches to this
job's run (``fgrft.tracking.attach_run``) and logs the per-step metrics; the
other ranks log nothing. The parent keeps the run open and logs the summary
and the ``evaluate_after`` child itself once the ranks are done.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fgrft.tracking import TrackedRun, redact_obj

from .launch import launch_env, run_launch, write_launch_files
from .trainer import cuda_available, use_bf16

SPEC_FILE = "launch_spec.json"


def launch_ranks(cfg: DictConfig, tracked: TrackedRun, lineage: dict[str, Any],
                 resume: Path | None) -> dict[str, Any]:
    run_dir = tracked.job.run_dir
    # Redacted like config.yaml: the ranks need no secret the environment does not already give them.
    container = redact_obj(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    gpu = cuda_available()
    cmd = write_launch_files(container, run_dir, gpu=gpu, bf16=use_bf16(cfg.trainer.precision))
    (run_dir / SPEC_FILE).write_text(json.dumps(
        {"lineage": lineage, "resume": str(resume) if resume else None}, indent=2) + "\n")
    env = launch_env(tracked.subprocess_env(), gpu=gpu, local_processes=cfg.trainer.num_processes)
    if cfg.trainer.distributed == "zero3":
        env.pop("ACCELERATE_USE_CPU", None)  # the worker sets up a DeepSpeed state over gloo instead
    return run_launch(cmd, env, run_dir)
