"""``hydra/launcher=slurm``: submitit's SLURM launcher, one task per node, only node 0 running the job.

Hydra finds launchers only in the ``hydra_plugins`` package, hence this thin module; the node logic
is ``fgrft.training.slurm``. With one node per job it behaves exactly like submitit_slurm. With
``nodes`` > 1 (from ``trainer.num_machines``), SLURM starts this callable on every node: node 0 runs
the Hydra job (job logging, MLflow, the run directory, its own ranks); the others only compute the
job's run directory, as Hydra would, and follow node 0 there.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class MultiNodeSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        _check_nodes(self.params, self.config, job_overrides)
        return super().launch(job_overrides, initial_job_idx)

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> Any:
        from fgrft.training import slurm

        if slurm.slurm_num_nodes() <= 1:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        run_dir, cfg = self._job_dir(sweep_overrides, job_dir_key, singleton_state)
        if os.environ.get("SLURM_NODEID", "0") == "0":
            try:
                return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
            finally:
                slurm.mark_main_done(run_dir)
        slurm.follow_main_node(run_dir, OmegaConf.to_container(cfg.trainer, resolve=True), cfg.node_wait_s)
        return None

    def _job_dir(self, sweep_overrides: List[str], job_dir_key: str,
                 singleton_state: Dict[type, Singleton]) -> tuple[Path, Any]:
        """The job's run directory and task config, computed as ``hydra.core.utils.run_job`` does."""
        from fgrft.config import validate
        from fgrft.config.scale import apply_scale

        Singleton.set_state(singleton_state)
        setup_globals()
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(sweep_overrides))
        HydraConfig.instance().set_config(config)
        run_dir = Path(str(OmegaConf.select(config, job_dir_key)), str(OmegaConf.select(config, "hydra.sweep.subdir")))
        task_cfg = apply_scale(validate(config, config.hydra.job.name))
        return run_dir.resolve(), task_cfg


def _check_nodes(params: Dict[str, Any], config: Any, job_overrides: Sequence[Sequence[str]]) -> None:
    """Before submitting: every job asks SLURM for as many nodes as its trainer.num_machines."""
    nodes = int(params.get("nodes") or 1)
    machines = OmegaConf.select(config, "trainer.num_machines", default=None)
    if machines is None:
        return  # not a training job: nodes is the launcher's own business
    for overrides in job_overrides:
        wanted = int(next((o.split("=", 1)[1] for o in overrides if o.startswith("trainer.num_machines=")), machines))
        if wanted != nodes:
            raise ValueError(f"hydra.launcher.nodes={nodes} but trainer.num_machines={wanted}: the launcher's nodes "
                             "follows trainer.num_machines; set only trainer.num_machines (one value per command)")
    if nodes > 1 and int(params.get("tasks_per_node") or 1) != 1:
        raise ValueError(f"hydra.launcher.tasks_per_node={params.get('tasks_per_node')}: multi-node training runs "
                         "one task per node, which starts that node's trainer.num_processes ranks")
