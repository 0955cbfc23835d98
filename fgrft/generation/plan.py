"""``dry_run=true``: the calls a run would make, per step and model, with tokens and dollars.

Nothing is called and nothing is started (no server, no model build, no API key needed).

Prompt sizes are measured, not guessed: each step's template is rendered for every question
with the earlier answers left empty, and the expected size of those answers is added (the
step's ``inputs``). Output sizes are a typical full-size answer per step, capped by the role's
``max_output_tokens``. What cannot be known in advance is an assumption, printed with the
figures: how many chains the gate sends back (``REVISION_RATE_ASSUMED``) and how many hidden
reasoning tokens a reasoning model spends per call (``REASONING_TOKENS_ASSUMED``, billed as
output). Fallback calls are not planned.

When the source cannot be loaded here (the hub is offline), the per-question prompt sizes of
the bundled sample are scaled to ``source.n`` (or ``source.limit``), and the printout says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from fgrft.config import PRICES_FILE
from fgrft.llm import Estimate, PlannedCall, estimate, load_prices
from fgrft.llm.accounting import CHARS_PER_TOKEN
from fgrft.generation.endpoints import ROLES, is_local, is_reasoning, served_model
from fgrft.generation.prompts import PromptSet
from fgrft.generation.steps import empty_outputs
from fgrft.records import Question

REVISION_RATE_ASSUMED = 0.3
REASONING_TOKENS_ASSUMED = 1024
BATCH_WINDOW_H = 24   # the provider's completion window per batch (OpenAI: 24 hours)


@dataclass
class Plan:
    calls: list[PlannedCall]
    questions: int
    notes: list[str] = field(default_factory=list)
    assumptions: dict[str, Any] = field(default_factory=dict)


def prompt_chars(prompts: PromptSet, step: str, q: Question, *, revision: bool = False) -> int:
    steps = prompts.recipe.steps
    variables = prompts.recipe.context(step, q, empty_outputs(), revise_note="" if revision else None)
    own = len(prompts.render_context(step, variables))
    extra = (("p3", "gate") if prompts.recipe.revision_edits_chain else ("gate",)) if revision else ()
    inputs = steps[step].inputs + extra  # + the note (and the rejected chain, if the recipe shows it)
    return own + sum(steps[i].expected_output_tokens for i in inputs) * CHARS_PER_TOKEN


def make_plan(prompts: PromptSet, questions: Sequence[Question], count: int,
              settings: dict[str, dict[str, Any]], *, max_revisions: int, regate: bool) -> Plan:
    """``count`` questions shaped like ``questions`` (the same list, or a sample of it)."""
    calls: list[PlannedCall] = []
    revised = round(count * REVISION_RATE_ASSUMED) if max_revisions > 0 else 0
    recipe_steps = prompts.recipe.steps
    steps = [(name, name, count, False) for name in recipe_steps]
    steps += [("p3", "p3 revision", revised, True)]
    if regate:
        steps += [("gate", "gate recheck", revised, False)]
    for name, label, n, revision in steps:
        if n == 0 or not questions:
            continue
        role = settings[recipe_steps[name].role]
        out = min(recipe_steps[name].expected_output_tokens, int(role["max_output_tokens"]))
        if is_reasoning(role):
            out += REASONING_TOKENS_ASSUMED
        chars = sum(prompt_chars(prompts, name, q, revision=revision)
                    for q in questions) / len(questions)
        calls.append(PlannedCall(step=label, model=served_model(role), output_tokens=out,
                                 prompt_chars=round(chars), count=n, local=is_local(role)))
    # Batch mode runs in step-synchronous rounds: the six steps, and each revision (with its
    # re-gate) moves the revised chains' P4 and P5 one round later.
    rounds = len(recipe_steps) + (max_revisions * (2 if regate else 1) if revised else 0)
    assumptions = {"revision_rate": REVISION_RATE_ASSUMED if max_revisions > 0 else 0.0,
                   "batch_rounds": rounds,
                   "reasoning_tokens_per_call": REASONING_TOKENS_ASSUMED,
                   "reasoning_models": sorted({served_model(settings[r]) for r in ROLES
                                               if is_reasoning(settings[r])})}
    return Plan(calls=calls, questions=count, assumptions=assumptions)


def price(plan: Plan, mode: str = "sync") -> Estimate:
    return estimate(plan.calls, load_prices(PRICES_FILE), mode=mode)


def compare_modes(plan: Plan, sync: Estimate, batch: Estimate) -> str:
    """Sync and batch cost side by side, and the worst-case wall time of batch mode."""
    lines = [f"{'sync vs batch':24} {'calls':>9} {'sync USD':>11} {'batch USD':>11}"]
    for model, row in sync.per_model.items():
        lines.append(f"  {model[:22]:22} {row.calls:>9,} {row.cost_usd:>11.2f} "
                     f"{batch.per_model[model].cost_usd:>11.2f}")
    lines.append(f"{'total':24} {sync.total.calls:>9,} {sync.total.cost_usd:>11.2f} "
                 f"{batch.total.cost_usd:>11.2f}")
    rounds = plan.assumptions["batch_rounds"]
    lines.append(f"batch mode (generator.mode=batch verifier.mode=batch): {rounds} rounds; worst "
                 f"case {rounds} x {BATCH_WINDOW_H} h = {rounds * BATCH_WINDOW_H} h when every "
                 "batch uses its whole completion window (each retry of unanswered rows adds a "
                 "window)")
    return "\n".join(lines)


def report(plan: Plan, est: Estimate, batch: Estimate | None = None) -> str:
    lines = [f"dry run: {plan.questions:,} questions, nothing called", est.format()]
    if batch is not None:
        lines.append(compare_modes(plan, est, batch))
    a = plan.assumptions
    lines.append(f"assumes {a['revision_rate']:.0%} of chains revised once"
                 + (f" and {a['reasoning_tokens_per_call']:,} reasoning tokens per call of "
                    f"{', '.join(a['reasoning_models'])}" if a["reasoning_models"] else ""))
    lines += plan.notes
    return "\n".join(lines)


def to_json(plan: Plan, est: Estimate, extra: dict[str, Any], batch: Estimate | None = None) -> str:
    out = {"schema_version": 1, "questions": plan.questions, **est.to_dict(),
           "assumptions": plan.assumptions, "notes": plan.notes, **extra}
    if batch is not None:
        out["batch"] = {"per_model": {k: v.to_dict() for k, v in batch.per_model.items()},
                        "total": batch.total.to_dict(),
                        "worst_case_wall_h": plan.assumptions["batch_rounds"] * BATCH_WINDOW_H}
    return json.dumps(out, indent=2)
