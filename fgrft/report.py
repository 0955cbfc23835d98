"""`python -m fgrft.report` — The thesis tables from MLflow runs, with deltas, paired tests and plots.

Usage: python -m fgrft.report experiment_name=NAME [sweep_id=ID] [experiments=[A,B,...]] [claims=PATH]
"""
from fgrft.app import hydra_entry


def report_job(cfg, tracked):
    from fgrft.reporting.job import report_job as run

    return run(cfg, tracked)


main = hydra_entry("report", report_job)

if __name__ == "__main__":
    main()
