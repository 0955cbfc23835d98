"""`python -m fgrft.train` — Stage 2: supervised fine-tuning of the student model.

Usage: python -m fgrft.train [group=option ...] [key=value ...] [-m] [--cfg job] [--help]
"""
from fgrft.app import hydra_entry


def train_job(cfg, tracked):
    from fgrft.evaluation.job import run_evaluation  # for evaluate_after=true: training never imports it
    from fgrft.training.job import train_job as run

    return run(cfg, tracked, evaluate=run_evaluation)


main = hydra_entry("train", train_job)

if __name__ == "__main__":
    main()
