"""`python -m fgrft.generate` — Stage 1: verifier-guided data generation.

Usage: python -m fgrft.generate [generator=...] [verifier=...] [source=...] [dry_run=true] [budget_usd=N] [-m]

P1 student reasoning, P2 verifier, P3 guided correction, validation gate (+ revision), P4
conversational CoT, P5 final response; see fgrft/generation/job.py.
"""
from fgrft.app import hydra_entry


def generate_job(cfg, tracked):
    from fgrft.generation.job import generate_job as job

    return job(cfg, tracked)


def _check(cfg):
    from fgrft.generation.job import check_settings

    check_settings(cfg)


main = hydra_entry("generate", generate_job, check=_check)

if __name__ == "__main__":
    main()
