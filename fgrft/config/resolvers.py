"""OmegaConf resolvers used by conf/common.yaml for paths and run directories.

Run directories must be a pure function of the command (DESIGN: re-running the
same command resumes), so they are derived from the overrides, never from time.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys

from omegaconf import OmegaConf

# Run directories are passed back as override values (model.path=..., inference.path=...),
# so they avoid the characters Hydra's override grammar gives meaning to (= , [ ] ' " spaces).
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def dirname_for(overrides: str) -> str:
    """A readable, filesystem-safe and unique directory name for a set of overrides."""
    if not overrides:
        return "default"
    readable = _UNSAFE.sub("_", overrides.replace("=", "-"))[:60].strip("_.") or "run"
    return f"{readable}-{short_hash(overrides)}"


def command_overrides(argv: list[str] | None = None) -> list[str]:
    """The task overrides of this command line (flags and Hydra's own settings left out)."""
    argv = sys.argv[1:] if argv is None else argv
    return [a for a in argv if not a.startswith("-") and not a.startswith(("hydra.", "hydra/"))]


def sweep_key() -> str:
    # Jobs of one sweep are composed from per-job overrides, so the sweep's own
    # key has to come from the command line itself; the resolver is cached and
    # Hydra copies that cache into every job's config.
    return dirname_for(" ".join(command_overrides()))


def grad_accum_for(global_batch: int | None, micro_batch: int, processes: int, machines: int) -> int:
    """Accumulation steps that keep ``global_batch`` over ``machines`` x ``processes`` ranks of ``micro_batch``."""
    if global_batch is None:
        raise ValueError("trainer.global_batch_size=null leaves trainer.grad_accum to you: set it too")
    per_step = micro_batch * processes * machines
    if global_batch < 1 or per_step < 1 or global_batch % per_step:
        raise ValueError(f"trainer.global_batch_size={global_batch} is not a positive multiple of trainer.micro_batch_size "
                         f"x trainer.num_processes x trainer.num_machines = {micro_batch} x {processes} x {machines} "
                         f"= {per_step}")
    return global_batch // per_step


def register_resolvers() -> None:
    if OmegaConf.has_resolver("fgrft_cwd"):
        return
    OmegaConf.register_new_resolver("fgrft_cwd", lambda: os.getcwd(), use_cache=True)
    OmegaConf.register_new_resolver("fgrft_dirname", lambda s="": dirname_for(str(s)))
    OmegaConf.register_new_resolver("fgrft_sweep_key", sweep_key, use_cache=True)
    # trainer.grad_accum of presets with a global batch: rescaled for the number of machines and processes.
    OmegaConf.register_new_resolver("fgrft_grad_accum", grad_accum_for)
