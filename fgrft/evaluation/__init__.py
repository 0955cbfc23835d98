"""Stage 3: prompts, backends' hand-off, scoring, files and tracking of an evaluation."""
