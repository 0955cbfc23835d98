"""`python -m fgrft.train` — Stage 2: supervised fine-tuning of the student model.

Usage: python -m fgrft.train [group=option ...] [key=value ...] [-m] [--cfg job] [--help]
"""
from fgrft.cli import hydra_entry

main = hydra_entry("train", None)

if __name__ == "__main__":
    main()
