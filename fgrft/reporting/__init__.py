"""`python -m fgrft.report`: the thesis tables rebuilt from MLflow evaluation runs.

claims   the claims registry (experiments/claims.yaml) and the comparability rule
collect  MLflow runs -> EvalRun views (eval_runs.py)
tables   thesis-layout tables, baselines, letter distributions, claim checks
paired   paired comparisons on the same items (bootstrap CI, McNemar), refusals
assemble everything above in one Report; render / plots write it out; job runs it

Reads runs through MLflow and the shared record types; never imports Stage 1, Stage 2 or the app.
"""
