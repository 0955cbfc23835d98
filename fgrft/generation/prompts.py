"""Stage 1 prompt templates: loaded from prompts/, identified by content hash, rendered per step.

    prompts = load_prompts("thesis")               # or "fgrft_plus": the recipe's folder
    text = prompts.render("p2", q, outputs)       # the user message of P2 for question q
    prompts.hashes                                 # {"p1": "3f0c...", ...} -> meta.prompt_hashes

A template's hash is :func:`fgrft.prompts.content_hash` of its text, so editing one prompt
changes its hash (and, through the request bytes, the response-cache keys of that step only).
The variables a template receives come from the recipe's context function
(:mod:`fgrft.generation.steps`); templates are compiled in the one environment of
:mod:`fgrft.prompts`, where an undefined variable is an error, never an empty string.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jinja2

from fgrft.config import PROMPTS_DIR
from fgrft.generation.steps import STEP_NAMES, Recipe, get_recipe
from fgrft.prompts import compile_template, content_hash
from fgrft.records import Question


@dataclass
class PromptSet:
    texts: dict[str, str]                       # step -> template source
    recipe: Recipe                              # whose inputs and schemas the templates expect
    hashes: dict[str, str] = field(init=False)  # step -> content hash
    _compiled: dict[str, jinja2.Template] = field(init=False, repr=False)

    def __post_init__(self):
        missing = [s for s in STEP_NAMES if s not in self.texts]
        if missing:
            raise ValueError(f"no prompt template for step(s) {missing}")
        self.hashes = {s: content_hash(self.texts[s]) for s in STEP_NAMES}
        self._compiled = {s: compile_template(self.texts[s]) for s in STEP_NAMES}

    @property
    def combined_hash(self) -> str:
        """One hash over the six templates (the run's ``prompt_hash`` param)."""
        return content_hash("\x1e".join(f"{s}={self.hashes[s]}" for s in STEP_NAMES))

    def render_context(self, step: str, variables: Mapping[str, Any]) -> str:
        return self._compiled[step].render(**variables).strip()

    def render(self, step: str, q: Question, outputs: Mapping[str, Any] | None = None, *,
               revise_note: str | None = None) -> str:
        variables = self.recipe.context(step, q, outputs or {}, revise_note=revise_note)
        return self.render_context(step, variables)

    def messages(self, step: str, q: Question, outputs: Mapping[str, Any] | None = None, *,
                 revise_note: str | None = None) -> list[dict]:
        return [{"role": "user", "content": self.render(step, q, outputs, revise_note=revise_note)}]


def load_prompts(recipe: str, directory: str | Path | None = None) -> PromptSet:
    """The templates of ``recipe`` from its folder under prompts/ (or from ``directory``)."""
    spec = get_recipe(recipe)
    directory = Path(directory) if directory is not None else PROMPTS_DIR / spec.prompt_subdir
    texts = {}
    for name, step in spec.steps.items():
        path = directory / step.template
        if not path.is_file():
            raise FileNotFoundError(f"prompt template for step {name!r} not found: {path}")
        texts[name] = path.read_text(encoding="utf-8")
    return PromptSet(texts, spec)
