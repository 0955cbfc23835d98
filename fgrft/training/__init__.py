"""Stage 2: supervised fine-tuning on verified reasoning traces.

* ``formatting``: records -> chat messages (the evaluation prompt as the user
  turn) -> token ids with assistant-only labels, truncation, data hash.
* ``batching``: packed (padding-free) | grouped | padded micro-batches, and the
  token/padding accounting saved with each checkpoint.
* ``trainer``: TRL's SFTTrainer with the thesis's optimisation settings, and
  the MLflow metrics callback.
* ``lineage``: intermediate checkpoints (resume), the final checkpoint, ``fgrft.json``.
* ``job``: the job function behind ``python -m fgrft.train``; one process trains in-process.
* ``launch`` / ``distributed`` / ``worker``: more processes or ZeRO-3: the job generates the
  accelerate and DeepSpeed settings from the trainer group, starts ``accelerate launch`` on
  ``python -m fgrft.training.worker <run_dir>`` and reads rank 0's result.
* ``slurm``: several nodes under SLURM: each node's plan from SLURM's variables; node 0 runs the
  job, the others follow it through markers in the shared run directory.

Importing this package is cheap; torch, transformers and TRL load in the
modules that need them. Never imports the other stages (generation, evaluation, reporting) or
the app: prompts come from :mod:`fgrft.prompts`, and ``evaluate_after`` runs the evaluation job
that ``python -m fgrft.train`` passes in.
"""
