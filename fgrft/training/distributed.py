"""The parent side of a distributed job: write the launch files, start the ranks, read rank 0's result.

MLflow: the ranks get ``tracked.subprocess_env()``, so rank 0 attaches to this
job's run (``fgrft.tracking.attach_run``) and logs the per-step metrics; the
other ranks log nothing. The parent keeps the run open and logs the summary
and the ``evaluate_after`` child itself once the ranks are done. In a SLURM
multi-node job this parent runs on node 0 only; its ranks are the first
``num_processes`` of the world (slurm.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fgrft.models.vllm_settings import cuda_available
from fgrft.secrets import redact_obj
from fgrft.tracking import TrackedRun

from .launch import rank_env, run_launch, write_launch_files
from .slurm import NodePlan, announce_launch, await_followers
from .trainer import use_bf16

SPEC_FILE = "launch_spec.json"


def launch_ranks(cfg: DictConfig, tracked: TrackedRun, lineage: dict[str, Any],
                 resume: Path | None, nodes: NodePlan | None = None) -> dict[str, Any]:
    """``nodes``: node 0's plan in a SLURM multi-node job, whose other nodes start their ranks once
    they see the launch files here (fgrft.training.slurm)."""
    run_dir = tracked.job.run_dir
    # Redacted like config.yaml: the ranks need no secret the environment does not already give them.
    container = redact_obj(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    gpu = cuda_available()
    cmd = write_launch_files(container, run_dir, gpu=gpu, bf16=use_bf16(cfg.trainer.precision))
    (run_dir / SPEC_FILE).write_text(json.dumps(
        {"lineage": lineage, "resume": str(resume) if resume else None}, indent=2) + "\n")
    env = rank_env(container["trainer"], tracked.subprocess_env(), gpu=gpu)
    if nodes is not None:
        await_followers(run_dir, nodes, cfg.node_wait_s)
        announce_launch(run_dir, nodes)
    return run_launch(cmd, env, run_dir)
