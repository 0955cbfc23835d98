"""`python -m fgrft.report` — The thesis tables from MLflow runs, with deltas, paired tests and plots.

Usage: python -m fgrft.report [group=option ...] [key=value ...] [-m] [--cfg job] [--help]
"""
from fgrft.cli import hydra_entry

main = hydra_entry("report", None)

if __name__ == "__main__":
    main()
