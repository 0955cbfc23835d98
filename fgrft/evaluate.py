"""`python -m fgrft.evaluate` — Stage 3: benchmark accuracy with confidence intervals and per-item predictions.

Usage: python -m fgrft.evaluate [model=...] [benchmark=...] [inference=vllm|hf|openai|replay] [scorer=...] [-m]
"""
from fgrft.cli import hydra_entry


def evaluate(cfg, tracked):
    from fgrft.evaluation.job import run_evaluation

    return run_evaluation(cfg, tracked)


main = hydra_entry("evaluate", evaluate)

if __name__ == "__main__":
    main()
