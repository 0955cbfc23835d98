"""Multi-node training under SLURM: one task per node, each finding its place in SLURM's variables.

``python -m fgrft.train -m hydra/launcher=slurm trainer=zero3_8gpu trainer.num_machines=N`` asks SLURM
for N nodes with one task each (the launcher's ``nodes`` interpolates ``trainer.num_machines``). Every
task reads submitit's SLURM job environment, which expands ``SLURM_JOB_NODELIST``: its node id is the
machine rank, the first host is the main address, and the port is ``trainer.main_process_port +
SLURM_JOB_ID mod 1000`` (two jobs sharing a node do not collide).

* Node 0 runs the Hydra job as on one machine (job logging, the MLflow run, the run directory's
  shared files, the consolidated checkpoint, ``evaluate_after``), and starts its local ranks with
  ``accelerate launch`` once every other node has acknowledged its marker.
* Nodes 1..N-1 never run the job (the launcher in ``hydra_plugins/fgrft_launcher`` sends them here):
  they wait for node 0's marker in the run directory, which therefore must be on a filesystem all
  nodes share, acknowledge it, wait for node 0's launch files and start their own local ranks,
  writing only ``nodes/node<k>/launch.log``.

Markers in ``<run_dir>/nodes/``: ``main.json`` (node 0 is up), ``node<k>.json`` (node k sees it),
``launch.json`` (the launch files are written: start), ``main_done.json`` (node 0's job returned).
Each names the SLURM job and its restart count (a requeued job keeps its id), so markers left by an
earlier attempt are never taken for this one's.

Without SLURM, ``python -m fgrft.training.slurm plan [overrides]`` prints the launch plan a node would
follow from the SLURM variables set in the environment, and ``python -m fgrft.training.slurm follow
RUN_DIR [overrides]`` runs a follower node's part by hand (what the launcher runs on nodes 1..N-1).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from fgrft.config import ConfigError
from fgrft.records import SUMMARY_FILE

log = logging.getLogger(__name__)

NODES_DIR = "nodes"
MAIN_MARKER = "main.json"
LAUNCH_MARKER = "launch.json"
DONE_MARKER = "main_done.json"
# Read by the plan; a task started by SLURM always has them.
REQUIRED_VARS = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES", "SLURM_NODEID")
POLL_S = 1.0


@dataclass(frozen=True)
class NodePlan:
    """Where one node stands in a multi-node job."""

    job_id: str
    machine_rank: int
    num_machines: int
    hostnames: list[str]
    main_process_ip: str
    main_process_port: int
    processes_per_machine: int

    @property
    def world_size(self) -> int:
        return self.num_machines * self.processes_per_machine

    @property
    def is_main(self) -> bool:
        return self.machine_rank == 0


def under_slurm(env: Mapping[str, str] | None = None) -> bool:
    return bool((os.environ if env is None else env).get("SLURM_JOB_ID"))


def job_key(env: Mapping[str, str] | None = None) -> str:
    """The SLURM job and attempt that markers must name: a requeued job keeps its SLURM_JOB_ID."""
    env = os.environ if env is None else env
    restart = env.get("SLURM_RESTART_COUNT", "0")
    return env["SLURM_JOB_ID"] + (f".restart{restart}" if restart not in ("", "0") else "")


def slurm_num_nodes(env: Mapping[str, str] | None = None) -> int:
    value = (os.environ if env is None else env).get("SLURM_JOB_NUM_NODES") or "1"
    return int(value) if value.isdigit() else 1


def node_plan(trainer: Mapping[str, Any]) -> NodePlan:
    """This task's plan from the SLURM variables in the environment, checked against the trainer group.

    Raises ConfigError naming the variable when one is missing or disagrees with the config; nothing
    has loaded a model yet when this runs.
    """
    from submitit.slurm.slurm import SlurmJobEnvironment

    env = os.environ
    missing = [v for v in REQUIRED_VARS if not env.get(v)]
    if missing:
        raise ConfigError(f"trainer.num_machines={trainer['num_machines']} under SLURM needs {', '.join(missing)} "
                          "in the environment (set by SLURM in each task of the job)")
    for var in ("SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NODEID"):
        if not env[var].isdigit():
            raise ConfigError(f"{var}={env[var]!r} is not a number")
    job = SlurmJobEnvironment()
    if job.num_nodes != trainer["num_machines"]:
        raise ConfigError(f"SLURM_JOB_NUM_NODES={job.num_nodes} but trainer.num_machines={trainer['num_machines']}: "
                          "hydra.launcher.nodes follows trainer.num_machines, do not set it apart")
    if "SLURM_NTASKS" in env and env["SLURM_NTASKS"] != str(job.num_nodes):
        raise ConfigError(f"SLURM_NTASKS={env['SLURM_NTASKS']} for {job.num_nodes} nodes: run one task per node "
                          "(hydra.launcher.tasks_per_node=1); each task starts its node's ranks itself")
    try:
        hosts = list(job.hostnames)
    except Exception as e:  # submitit's parse error names the variable's value
        raise ConfigError(f"SLURM_JOB_NODELIST: {e}") from None
    if len(hosts) != job.num_nodes:
        raise ConfigError(f"SLURM_JOB_NODELIST={env['SLURM_JOB_NODELIST']!r} names {len(hosts)} hosts, "
                          f"SLURM_JOB_NUM_NODES={job.num_nodes}")
    if not 0 <= job.node < job.num_nodes:
        raise ConfigError(f"SLURM_NODEID={job.node} is outside 0..{job.num_nodes - 1}")
    return NodePlan(job_id=job_key(env), machine_rank=job.node, num_machines=job.num_nodes,
                    hostnames=hosts, main_process_ip=hosts[0],
                    main_process_port=int(trainer["main_process_port"]) + int(env["SLURM_JOB_ID"]) % 1000,
                    processes_per_machine=int(trainer["num_processes"]))


def node_trainer(trainer: Mapping[str, Any], plan: NodePlan) -> dict[str, Any]:
    """The trainer group as this node launches it: rank, main address and port from SLURM."""
    return {**trainer, "machine_rank": plan.machine_rank, "main_process_ip": plan.main_process_ip,
            "main_process_port": plan.main_process_port}


# --- node 0 -----------------------------------------------------------------------------

def start_main_node(cfg: Any, run_dir: Path) -> NodePlan | None:
    """On node 0 of a SLURM multi-node job: fill the trainer's rendezvous keys and write the marker.

    None on one machine, and outside SLURM (machines started by hand set ``machine_rank`` and
    ``main_process_ip`` themselves).
    """
    from omegaconf import OmegaConf

    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer["num_machines"] <= 1 or not under_slurm():
        return None
    plan = node_plan(trainer)
    if not plan.is_main:
        raise ConfigError(f"SLURM_NODEID={plan.machine_rank}: only node 0 runs the training job; start multi-node "
                          "jobs with hydra/launcher=slurm, which runs the other nodes as followers")
    if trainer["main_process_ip"] and trainer["main_process_ip"] != plan.main_process_ip:
        log.warning("trainer.main_process_ip=%s replaced by the first SLURM host %s",
                    trainer["main_process_ip"], plan.main_process_ip)
    for key, value in node_trainer({}, plan).items():
        cfg.trainer[key] = value
    _write_marker(run_dir, MAIN_MARKER, plan, host=socket.gethostname())
    log.info("node 0 of %d (SLURM job %s): main address %s:%d, %d processes per node",
             plan.num_machines, plan.job_id, plan.main_process_ip, plan.main_process_port, plan.processes_per_machine)
    return plan


def await_followers(run_dir: Path, plan: NodePlan, wait_s: float) -> None:
    """Wait until nodes 1..N-1 have acknowledged node 0's marker (they see the run directory)."""
    pending = set(range(1, plan.num_machines))
    deadline = time.monotonic() + wait_s
    while True:
        pending = {k for k in pending if _read_marker(run_dir, f"node{k}.json", plan.job_id) is None}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"node(s) {sorted(pending)} did not acknowledge node 0's marker {run_dir / NODES_DIR / MAIN_MARKER} "
                f"within node_wait_s={wait_s:.0f} s: every node needs the run directory on a filesystem shared with "
                "node 0 (or those nodes did not start: see the submitit logs)")
        time.sleep(POLL_S)


def announce_launch(run_dir: Path, plan: NodePlan) -> None:
    _write_marker(run_dir, LAUNCH_MARKER, plan)


def mark_main_done(run_dir: Path, job_id: str | None = None) -> None:
    """Node 0's job returned (trained, failed, or found the run already finished)."""
    _write_json(run_dir / NODES_DIR / DONE_MARKER, {"job_id": job_id or job_key()})


# --- nodes 1..N-1 -----------------------------------------------------------------------

def follow_main_node(run_dir: Path, trainer: Mapping[str, Any], wait_s: float) -> None:
    """Run a follower node's part of the job: wait for node 0, then start this node's ranks."""
    from .launch import ACCELERATE_CONFIG, accelerate_config, launch_command, rank_env, start_ranks
    from fgrft.models.vllm_settings import cuda_available

    plan = node_plan(trainer)
    if plan.is_main:
        raise ConfigError("SLURM_NODEID=0: node 0 runs the training job itself, not a follower")
    k = plan.machine_rank
    main = _wait_for(run_dir, MAIN_MARKER, plan.job_id, wait_s, what=(
        f"node {k}: node 0's marker {run_dir / NODES_DIR / MAIN_MARKER} (SLURM job {plan.job_id}) is not visible "
        f"after node_wait_s={wait_s:.0f} s: every node needs the run directory on a filesystem shared with node 0"))
    if (main["main_process_ip"], main["main_process_port"]) != (plan.main_process_ip, plan.main_process_port):
        raise ConfigError(f"node {k} derived main address {plan.main_process_ip}:{plan.main_process_port} from "
                          f"SLURM_JOB_NODELIST, node 0 wrote {main['main_process_ip']}:{main['main_process_port']}")
    _write_marker(run_dir, f"node{k}.json", plan, host=socket.gethostname())
    started = _wait_for(run_dir, (LAUNCH_MARKER, DONE_MARKER), plan.job_id, wait_s, what=(
        f"node {k}: node 0 wrote no {LAUNCH_MARKER} within node_wait_s={wait_s:.0f} s (see node 0's log in {run_dir})"))
    if started["marker"] == DONE_MARKER:
        if (run_dir / SUMMARY_FILE).is_file():
            log.info("node %d: node 0 found the run already finished; nothing to launch", k)
            return
        raise RuntimeError(f"node {k}: node 0's job ended before launching the ranks (see its log in {run_dir})")

    from .launch import JOB_CONFIG

    shared = yaml.safe_load((run_dir / JOB_CONFIG).read_text())["trainer"]
    mine = node_trainer(shared, plan)
    gpu = cuda_available()
    node_dir = run_dir / NODES_DIR / f"node{k}"
    node_dir.mkdir(parents=True, exist_ok=True)
    acc_path = node_dir / ACCELERATE_CONFIG
    acc_path.write_text(yaml.safe_dump(accelerate_config(mine, gpu=gpu), sort_keys=False))
    log.info("node %d of %d: starting %d ranks against %s:%d", k, plan.num_machines, plan.processes_per_machine,
             plan.main_process_ip, plan.main_process_port)
    start_ranks(launch_command(acc_path, run_dir), rank_env(mine, os.environ, gpu=gpu), node_dir / "launch.log")


# --- markers ----------------------------------------------------------------------------

def _write_marker(run_dir: Path, name: str, plan: NodePlan, **extra: Any) -> None:
    _write_json(run_dir / NODES_DIR / name, {**asdict(plan), **extra})


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # a reader on another node sees the whole file or none


def _read_marker(run_dir: Path, name: str, job_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / NODES_DIR / name).read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("job_id") == job_id else None  # an earlier attempt's marker is not this job's


def _wait_for(run_dir: Path, names: str | tuple[str, ...], job_id: str, wait_s: float, *, what: str) -> dict[str, Any]:
    names = (names,) if isinstance(names, str) else names
    deadline = time.monotonic() + wait_s
    while True:
        for name in names:
            found = _read_marker(run_dir, name, job_id)
            if found is not None:
                return {**found, "marker": name}
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(POLL_S)


# --- command line -----------------------------------------------------------------------

def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from fgrft.config import CONF_DIR, register_resolvers, validate
    from fgrft.config.scale import apply_scale

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return apply_scale(validate(compose(config_name="train", overrides=overrides), "train"))


def launch_plan(overrides: list[str]) -> dict[str, Any]:
    """What this node would do, from the config and the SLURM variables in the environment."""
    from omegaconf import OmegaConf

    from .launch import accelerate_config, deepspeed_config, world_size

    cfg = _compose(overrides)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer["num_machines"] <= 1:
        raise ConfigError("trainer.num_machines=1: one machine, no multi-node plan to print")
    plan = node_plan(trainer)
    mine = node_trainer(trainer, plan)
    gpu = trainer["precision"] == "bf16"  # the plan is for the GPU nodes the trainer group targets
    return {
        "role": "main (runs the job, MLflow, checkpoint, evaluate_after)" if plan.is_main
        else "follower (waits for node 0's marker, starts its ranks)",
        **asdict(plan),
        "world_size": plan.world_size,
        "micro_batch_size": trainer["micro_batch_size"],
        "grad_accum": trainer["grad_accum"],
        "global_batch_size": trainer["micro_batch_size"] * trainer["grad_accum"] * world_size(trainer),
        "accelerate": accelerate_config(mine, gpu=gpu),
        "deepspeed": deepspeed_config(mine, bf16=gpu) if trainer["distributed"] == "zero3" else None,
    }


def main(argv: list[str]) -> int:
    usage = ("usage: python -m fgrft.training.slurm plan [overrides]\n"
             "       python -m fgrft.training.slurm follow RUN_DIR [overrides]")
    if not argv or argv[0] not in {"plan", "follow"} or (argv[0] == "follow" and len(argv) < 2):
        print(usage, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    try:
        if argv[0] == "plan":
            print(json.dumps(launch_plan(argv[1:]), indent=2))
        else:
            from omegaconf import OmegaConf

            cfg = _compose(argv[2:])
            follow_main_node(Path(argv[1]).resolve(), OmegaConf.to_container(cfg.trainer, resolve=True),
                             cfg.node_wait_s)
    except (ConfigError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
