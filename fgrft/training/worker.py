"""One rank of a distributed Stage 2 job: ``python -m fgrft.training.worker <run_dir>``.

Started by ``accelerate launch`` (fgrft.training.distributed), which passes the
rank and world by environment. Not a Hydra app: the parent already composed,
validated and scaled the config and saved it as ``job_config.yaml``, so every
rank trains on exactly what the parent checked.

Each rank writes ``ranks/rank<N>.json`` (rank, world size, what accelerate
reports) so a run shows, and the tests assert, that the ranks really formed
one world. Rank 0 attaches to the job's MLflow run and writes
``rank0_result.json`` for the parent.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .launch import DS_CONFIG, JOB_CONFIG, RANKS_DIR, RESULT_FILE

log = logging.getLogger("fgrft.training.worker")


def main(run_dir: Path) -> None:
    from fgrft.tracking import attach_run

    from .distributed import SPEC_FILE
    from .job import fit, prepare
    from fgrft.models.vllm_settings import cuda_available

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = OmegaConf.create(OmegaConf.load(run_dir / JOB_CONFIG))
    spec = json.loads((run_dir / SPEC_FILE).read_text())
    prepared = prepare(cfg)  # deterministic: the same examples and data hash as the parent's
    if prepared.data_hash != spec["lineage"]["data_hash"]:
        raise RuntimeError(f"rank {rank} tokenized other data than the parent "
                           f"({prepared.data_hash} != {spec['lineage']['data_hash']})")
    # Every parameter takes part in every forward pass; the search for unused ones costs a graph walk.
    overrides: dict = {"ddp_find_unused_parameters": False}
    if (run_dir / DS_CONFIG).is_file():
        overrides["deepspeed"] = str(run_dir / DS_CONFIG)
        if not cuda_available():
            overrides.update(_cpu_deepspeed_state())
    elif not cuda_available():
        # The fix for accelerate's silent 1-process world on CPU (RUNTIME.md): an explicit gloo backend.
        overrides["ddp_backend"] = "gloo"
    # Only rank 0 logs into the job's run; the others never open one.
    tracking = attach_run() if rank == 0 else contextlib.nullcontext()
    with tracking:
        resume = Path(spec["resume"]) if spec["resume"] else None
        summary = fit(cfg, prepared, run_dir, spec["lineage"], resume, **overrides)
        _record_rank(run_dir, rank)
        if rank == 0:
            (run_dir / RESULT_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def _cpu_deepspeed_state() -> dict:
    """ZeRO-3 on CPU processes: set up accelerate's state before the SFTConfig does.

    Left to transformers, the DeepSpeed path initialises with backend None on
    CPU and accelerate then reports a world of 1 on every rank while DeepSpeed
    runs 2 (RUNTIME.md's silent bug). Here the state is built first, as a
    DeepSpeed state (not a CPU one: accelerate only picks DeepSpeed when not
    told ``cpu``) over gloo, and the SFTConfig is told to reuse it.
    """
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    os.environ.pop("ACCELERATE_USE_CPU", None)
    PartialState(backend="gloo")
    return {"use_cpu": False, "accelerator_config": {"use_configured_state": True}}


def _record_rank(run_dir: Path, rank: int) -> None:
    from accelerate import PartialState

    state = PartialState()
    seen = {"rank": rank, "env_world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "num_processes": state.num_processes, "process_index": state.process_index,
            "distributed_type": str(state.distributed_type), "backend": state.backend}
    (run_dir / RANKS_DIR).mkdir(exist_ok=True)
    (run_dir / RANKS_DIR / f"rank{rank}.json").write_text(json.dumps(seen) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fgrft.training.worker <run_dir>")
    main(Path(sys.argv[1]))
