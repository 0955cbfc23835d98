"""Stage 1: the verifier-guided generation pipeline behind ``python -m fgrft.generate``.

    steps.py     the six steps: role, what each sees, output JSON schemas
    prompts.py   templates under prompts/, rendered per step, identified by content hash
    guards.py    checks between steps and the drop reasons
    run.py       the chain per question, many questions concurrently, through the call engine
    endpoints.py generator / verifier endpoints (and the embedded server when needed)
    plan.py      dry-run planning and pricing
    progress.py  live bar or periodic log lines
    job.py       the Hydra job: select, plan or run, write the files

Importing the package imports neither torch nor vLLM. Never imports the other stages
(training, evaluation, reporting) or the app; the embedded server is :mod:`fgrft.models.server`.
"""
