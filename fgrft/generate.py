"""`python -m fgrft.generate` — Stage 1: verifier-guided data generation.

Usage: python -m fgrft.generate [group=option ...] [key=value ...] [-m] [--cfg job] [--help]
"""
from fgrft.cli import hydra_entry

main = hydra_entry("generate", None)

if __name__ == "__main__":
    main()
