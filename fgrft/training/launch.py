"""Multi-process training: the Hydra job starts ``accelerate launch`` on the rank worker.

The trainer group states the batch geometry once (micro-batch, accumulation,
processes, precision, clipping); the DeepSpeed JSON and the accelerate YAML
are generated from it into the run directory, so a run's launch settings can
be read next to its outputs and cannot drift from the SFTConfig the ranks build.

The worker (``python -m fgrft.training.worker <run_dir>``) is a plain module
fed the already composed and validated config (``job_config.yaml``): ranks do
not compose Hydra again, so they cannot disagree with the parent about
overrides or run directory.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

log = logging.getLogger(__name__)

JOB_CONFIG = "job_config.yaml"
DS_CONFIG = "deepspeed.json"
ACCELERATE_CONFIG = "accelerate.yaml"
LAUNCH_LOG = "launch.log"
RANKS_DIR = "ranks"
RESULT_FILE = "rank0_result.json"


def is_distributed(trainer: Mapping[str, Any]) -> bool:
    """More than one process, or ZeRO-3 (which needs DeepSpeed's launcher even on one process)."""
    return trainer["num_processes"] * trainer["num_machines"] > 1 or trainer["distributed"] == "zero3"


def world_size(trainer: Mapping[str, Any]) -> int:
    return trainer["num_processes"] * trainer["num_machines"]


def deepspeed_config(trainer: Mapping[str, Any], *, bf16: bool) -> dict[str, Any]:
    """ZeRO-3 settings of the thesis: no offload, clipping, consolidated 16-bit save.

    Values are explicit rather than DeepSpeed's "auto" so the file alone says
    what ran; transformers checks them against the SFTConfig and fails on a
    mismatch, which is what keeps them stated once.
    """
    micro, accum = trainer["micro_batch_size"], trainer["grad_accum"]
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size(trainer),
        "gradient_clipping": trainer["max_grad_norm"],
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "none"},
            "offload_param": {"device": "none"},
            "overlap_comm": True,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "steps_per_print": 10**9,  # the trainer logs; DeepSpeed's own prints only add noise
        "wall_clock_breakdown": False,
    }


def accelerate_config(trainer: Mapping[str, Any], *, gpu: bool) -> dict[str, Any]:
    """accelerate's launch config. On CPU the DDP type is MULTI_GPU with ACCELERATE_USE_CPU=true in
    the environment: ``use_cpu: true`` would make ``accelerate launch`` start a single process (RUNTIME.md)."""
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_processes": world_size(trainer),  # accelerate counts processes over all machines
        "num_machines": trainer["num_machines"],
        "machine_rank": trainer["machine_rank"],
        "main_process_port": trainer["main_process_port"],
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "mixed_precision": "bf16" if (gpu and trainer["precision"] == "bf16") else "no",
    }
    if trainer["main_process_ip"]:
        cfg["main_process_ip"] = trainer["main_process_ip"]
    # ZeRO-3 too is launched as plain multi-process: the DeepSpeed JSON reaches the ranks through
    # SFTConfig(deepspeed=...), which builds the plugin in code. accelerate's DEEPSPEED launch type
    # would also export its own DeepSpeed settings, which accelerate then refuses beside a config file.
    cfg["distributed_type"] = "MULTI_GPU"
    return cfg


def write_launch_files(cfg_container: Mapping[str, Any], run_dir: Path, *, gpu: bool, bf16: bool) -> list[str]:
    """Write job config, DeepSpeed and accelerate settings; return the launch command."""
    trainer = cfg_container["trainer"]
    (run_dir / JOB_CONFIG).write_text(yaml.safe_dump(dict(cfg_container), sort_keys=False))
    ds_path = None
    if trainer["distributed"] == "zero3":
        ds_path = run_dir / DS_CONFIG
        ds_path.write_text(json.dumps(deepspeed_config(trainer, bf16=bf16), indent=2) + "\n")
    acc_path = run_dir / ACCELERATE_CONFIG
    acc_path.write_text(yaml.safe_dump(accelerate_config(trainer, gpu=gpu), sort_keys=False))
    return launch_command(acc_path, run_dir)


def launch_command(accelerate_yaml: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_yaml),
            "-m", "fgrft.training.worker", str(run_dir)]


def launch_env(base: Mapping[str, str], *, gpu: bool, local_processes: int) -> dict[str, str]:
    env = dict(base)
    if not gpu:
        env["ACCELERATE_USE_CPU"] = "true"
        # Each rank gets its share of the cores; N ranks x all cores thrash a small machine.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, local_processes))))
    return env


def rank_env(trainer: Mapping[str, Any], base: Mapping[str, str], *, gpu: bool) -> dict[str, str]:
    """The environment of one machine's ``accelerate launch``."""
    env = launch_env(base, gpu=gpu, local_processes=trainer["num_processes"])
    if trainer["distributed"] == "zero3":
        env.pop("ACCELERATE_USE_CPU", None)  # the worker sets up a DeepSpeed state over gloo instead
    return env


def start_ranks(cmd: list[str], env: Mapping[str, str], log_path: Path) -> None:
    """Run this machine's ranks, their output appended to ``log_path``; raise if they fail."""
    log.info("launching: %s", " ".join(cmd))
    started = time.perf_counter()
    with log_path.open("a") as out:
        rc = subprocess.call(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
    log.info("ranks finished with exit status %d after %.1f s", rc, time.perf_counter() - started)
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"distributed training failed (exit status {rc}); see {log_path}:\n{tail}")


def run_launch(cmd: list[str], env: Mapping[str, str], run_dir: Path) -> dict[str, Any]:
    """Run the ranks; their output goes to ``launch.log``. Returns rank 0's result."""
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    start_ranks(cmd, env, run_dir / LAUNCH_LOG)
    try:
        return json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"the ranks exited cleanly but rank 0 left no {RESULT_FILE}: {e}") from None
