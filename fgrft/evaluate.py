"""`python -m fgrft.evaluate` — Stage 3: benchmark accuracy with confidence intervals and per-item predictions.

Usage: python -m fgrft.evaluate [group=option ...] [key=value ...] [-m] [--cfg job] [--help]
"""
from fgrft.cli import hydra_entry

main = hydra_entry("evaluate", None)

if __name__ == "__main__":
    main()
