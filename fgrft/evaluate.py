"""`python -m fgrft.evaluate` — Stage 3: benchmark accuracy with confidence intervals and per-item predictions.

Usage: python -m fgrft.evaluate [model=...] [benchmark=...] [inference=vllm|hf|openai|replay] [scorer=...] [-m]
"""
from fgrft.app import hydra_entry


def evaluate(cfg, tracked):
    from fgrft.evaluation.job import run_evaluation

    return run_evaluation(cfg, tracked)


def _prepare(cfg, overrides):
    from fgrft.evaluation.backends.replay import with_replay_lineage

    if cfg.get("resume") is False:
        # Before the tracked run starts, so that it is a fresh MLflow run in the same directory.
        from hydra.core.hydra_config import HydraConfig

        from fgrft.evaluation.resume import set_aside

        set_aside(HydraConfig.get().runtime.output_dir)
    return with_replay_lineage(cfg, overrides)


def _check(cfg):
    from fgrft.evaluation.job import check_inputs

    check_inputs(cfg)


main = hydra_entry("evaluate", evaluate, prepare=_prepare, check=_check)

if __name__ == "__main__":
    main()
