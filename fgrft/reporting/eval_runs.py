"""The report's view of one evaluation run: identity, scores per source, predictions.

Built from what an evaluation run logs (params, ``metrics.json``,
``predictions.jsonl``; CONTRACTS.md) by :mod:`fgrft.reporting.collect`, or
directly by tests. Nothing here talks to MLflow.
"""
from __future__ import annotations

import dataclasses

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from fgrft.config.options import option_values
from fgrft.records import Prediction
from fgrft.scoring.stats import wilson_interval
from fgrft.scoring.thesis import source_name

BASE_ARM = "base"
# Data arms of a fine-tuned model, from the training data's (format, target_format).
ARMS_BY_FORMAT = {
    ("fgrft", "thinking"): "fgrft",
    ("fgrft", "raw"): "fgrft_raw",
    ("naive_cot", "raw"): "naive_cot_raw",
    ("naive_cot", "thinking"): "naive_cot_thinking",
}
ARM_NAMES = {
    "base": "base",
    "fgrft": "FGRFT",
    "fgrft_raw": "FGRFT (raw target)",
    "naive_cot_raw": "naive CoT (raw)",
    "naive_cot_thinking": "naive CoT (format-matched)",
}
# Recipe-ablation arms: FGRFT records written by one Stage 1 recipe (the training run's `recipe`).
RECIPES = ("thesis", "fgrft_plus")
ARM_NAMES.update({f"fgrft:{r}": f"FGRFT ({r} recipe)" for r in RECIPES})
ARM_LEGEND = ("Data arms: base = the model as released; FGRFT = fine-tuned on the FGRFT records; naive CoT (raw) "
              "= fine-tuned on Mixtral CoT with the raw response as target (the thesis's naive-CoT arm); naive CoT "
              "(format-matched) = the same CoT in the Thinking / Final Response shape; FGRFT (R recipe) = "
              "fine-tuned on the records Stage 1 wrote with recipe=R (+experiment=recipe_ablation).")
LINEAGE_PARAMS = ("base_model", "data_hash", "train_run_id")


def arm_of_data_label(label: str) -> str:
    """The arm of a run that carries only a data label: its data option's (format, target_format)."""
    option = option_values("data", label)
    return ARMS_BY_FORMAT.get((option.get("format"), option.get("target_format")), f"data:{label}")


def data_arm(params: Mapping[str, str]) -> str | None:
    """The data arm named by a run's params (its own or its training run's), or None."""
    fmt, target = params.get("data.format"), params.get("data.target_format")
    if fmt and target:
        arm = ARMS_BY_FORMAT.get((fmt, target), f"{fmt}/{target}")
        recipe = recipe_of(params)
        return f"{arm}:{recipe}" if recipe else arm
    label = params.get("data_label")
    if label:
        return arm_of_data_label(label)
    return None


def recipe_of(params: Mapping[str, str] | None) -> str | None:
    """The Stage 1 recipe a recipe-ablation training run's records came from (its `recipe` param)."""
    recipe = (params or {}).get("recipe")
    return None if recipe in (None, "", "None", "null") else recipe


def arm_of(params: Mapping[str, str], train_params: Mapping[str, str] | None) -> str:
    """Which data arm an evaluation measures.

    A fine-tuned checkpoint is known by its own data params, its training
    run's, or at least by lineage params (then the data is unknown); a run with
    none of these evaluated an untouched model: the base arm.
    """
    for source in (params, train_params or {}):
        arm = data_arm(source)
        if arm:
            return arm
    if any(params.get(k) for k in LINEAGE_PARAMS):
        data_hash = params.get("data_hash")
        return f"fine-tuned (data {data_hash})" if data_hash else "fine-tuned (data unknown)"
    return BASE_ARM


def arm_name(arm: str) -> str:
    return ARM_NAMES.get(arm, arm)


def fmt_t(temperature: float | None) -> str:
    """A temperature as tables print it (0.5, 0.7; "-" when a run did not log one)."""
    return "-" if temperature is None else f"{temperature:g}"


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class SourceScore:
    """A run's score on one source (as in metrics.json's per_source block)."""

    source: str
    correct: int
    total: int
    ci_low: float
    ci_high: float
    unparsed: int = 0
    head_correct: int | None = None
    tail_correct: int | None = None
    dropped: int = 0  # empty outputs the thesis scorer left out of `total`

    @property
    def items(self) -> int:
        """Items scored or dropped: the size of the item set, whatever the scorer."""
        return self.total + self.dropped

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def thesis_tuple(self) -> tuple[float, int, int, int] | None:
        if self.head_correct is None or self.tail_correct is None:
            return None
        return (self.accuracy, self.head_correct, self.total, self.tail_correct)


@dataclass(eq=False)  # a run is itself: compared by identity, never field by field over its predictions
class EvalRun:
    """One evaluation run as the report needs it."""

    run_id: str
    name: str
    experiment: str
    model_label: str
    arm: str
    temperature: float | None
    scorer: str
    prompt: str | None
    prompt_hash: str | None
    items_hash: str | None
    scale: str = "full"
    sweep_id: str = ""
    replicate: str = ""  # seeds that make runs of one row replicates of each other
    benchmark: str = ""
    per_source: dict[str, SourceScore] = field(default_factory=dict)
    predictions: list[Prediction] = field(default_factory=list)
    samples: dict[str, Any] | None = None  # metrics.json "samples" block (n_samples > 1)
    overall: SourceScore | None = None  # metrics.json "overall" block (pooled over sources)
    notes: list[str] = field(default_factory=list)
    # Recipe ablation, from the training run: the records' recipe, how many question ids the arms
    # shared, and how many bundled records a toy arm added because too few were left.
    recipe: str | None = None
    shared_ids: int | None = None
    bundled_added: int = 0
    rescored: bool = False  # the other scorer's reading of a run's outputs (metrics.json by_scorer)

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    @property
    def label(self) -> str:
        """Model label and data arm: what a table row shows before temperature."""
        return self.model_label if self.arm == BASE_ARM else f"{self.model_label} + {arm_name(self.arm)}"

    @property
    def sources(self) -> list[str]:
        return list(self.per_source)

    def outcomes(self, sources: Iterable[str] | None = None) -> dict[tuple[str, str], bool | None]:
        """Correctness of sample 0 per (source, item id); None where the scorer dropped the item.

        The thesis scorer drops empty outputs from its denominator (their
        ``head`` is None); a paired test leaves such items out as well. Under
        that scorer an item counts as correct when its tail reading is (the
        same reading in both runs of a pair, not each run's better one).
        """
        wanted = set(sources) if sources is not None else None
        out: dict[tuple[str, str], bool | None] = {}
        for p in self.predictions:
            if p.sample != 0:
                continue
            source = source_name(p.source)
            if wanted is not None and source not in wanted:
                continue
            if self.scorer == "thesis":
                # The legacy scorer's own correctness uses the head or tail reading, whichever
                # scored better on this run; a paired test compares the tail reading of both runs.
                out[(source, p.id)] = None if p.head is None else p.tail == p.answer_idx
            else:
                out[(source, p.id)] = bool(p.correct)
        return out


def _score(source: str, block: Mapping[str, Any]) -> SourceScore:
    return SourceScore(source=source, correct=int(block["correct"]), total=int(block["total"]),
                       ci_low=float(block["ci_low"]), ci_high=float(block["ci_high"]),
                       unparsed=int(block.get("unparsed", 0)),
                       head_correct=block.get("head_correct"), tail_correct=block.get("tail_correct"),
                       dropped=int(block.get("dropped_empty", 0)))


def scores_from_metrics(doc: Mapping[str, Any]) -> dict[str, SourceScore]:
    return {source: _score(source, block) for source, block in (doc.get("per_source") or {}).items()}


def scores_from_predictions(predictions: Iterable[Prediction], scorer: str) -> dict[str, SourceScore]:
    """Per-source counts recomputed from scored predictions (when metrics.json is missing).

    Pools all samples; the Wilson interval then treats samples as independent,
    which is only right for one sample per item (the caller notes this).
    """
    counted: dict[str, list[Prediction]] = defaultdict(list)
    dropped: dict[str, int] = defaultdict(int)
    for p in predictions:
        if scorer == "thesis" and p.head is None:
            dropped[source_name(p.source)] += 1  # an empty output, dropped by the thesis scorer
            continue
        counted[source_name(p.source)].append(p)
    scores = {}
    for source, preds in counted.items():
        correct, total = sum(bool(p.correct) for p in preds), len(preds)
        low, high = wilson_interval(correct, total)
        scores[source] = SourceScore(source=source, correct=correct, total=total, ci_low=low, ci_high=high,
                                     unparsed=sum(p.extracted is None for p in preds), dropped=dropped[source])
    return scores


def eval_run_from_logged(*, run_id: str, name: str, experiment: str, params: Mapping[str, str],
                         tags: Mapping[str, str], metrics_doc: Mapping[str, Any] | None,
                         predictions: list[Prediction] | None,
                         train_params: Mapping[str, str] | None = None) -> EvalRun:
    """An :class:`EvalRun` from what an evaluation run logged.

    Raises ValueError when neither metrics.json nor predictions are there.
    """
    if metrics_doc is None and not predictions:
        raise ValueError("no metrics.json and no predictions.jsonl artifact")
    metrics_doc = metrics_doc or {}
    scorer = params.get("scorer") or params.get("scorer.name") or metrics_doc.get("scorer") or "unknown"
    notes = []
    if metrics_doc.get("per_source"):
        per_source = scores_from_metrics(metrics_doc)
    else:
        per_source = scores_from_predictions(predictions or [], scorer)
        notes.append("no metrics.json: scores recomputed from predictions.jsonl")
    if not predictions:
        notes.append("no predictions.jsonl: no paired tests, baselines or letter counts for this run")
    arm = arm_of(params, train_params)
    if arm == BASE_ARM and params.get("model.path") not in (None, "", "None", "null"):
        # A local checkpoint without lineage (no fgrft.json) cannot be told from the released model.
        notes.append(f"model.path {params['model.path']} has no lineage params: shown as the base model")
    temperature = _float(params.get("temperature"))
    if temperature is None:
        temperature = _float(params.get("temperature.temperature"))
    seeds = []
    if train_params and train_params.get("trainer.seed"):
        seeds.append(f"trainer.seed={train_params['trainer.seed']}")
    elif params.get("trainer.seed") and data_arm(params):
        seeds.append(f"trainer.seed={params['trainer.seed']}")
    if params.get("temperature.seed"):
        seeds.append(f"temperature.seed={params['temperature.seed']}")
    trained = train_params or params
    shared_ids = _float(trained.get("ids_matched"))
    return EvalRun(
        run_id=run_id, name=name, experiment=experiment,
        recipe=recipe_of(trained), shared_ids=None if shared_ids is None else int(shared_ids),
        bundled_added=int(_float(trained.get("bundled_added")) or 0),
        model_label=params.get("model_label") or params.get("model.name") or "unknown",
        arm=arm, temperature=temperature, scorer=scorer,
        prompt=params.get("prompt.name") or metrics_doc.get("prompt"),
        prompt_hash=params.get("prompt_hash"), items_hash=params.get("items_hash"),
        scale=params.get("scale", "full"), sweep_id=tags.get("sweep_id", ""), replicate=" ".join(seeds),
        benchmark=params.get("benchmark") or params.get("benchmark.name") or "",
        per_source=per_source, predictions=list(predictions or []),
        samples=metrics_doc.get("samples"), notes=notes,
        overall=_score("overall", metrics_doc["overall"]) if metrics_doc.get("overall") else None,
    )


def other_scorer_view(run: EvalRun, metrics_doc: Mapping[str, Any] | None,
                      rows: list[Mapping[str, Any]] | None) -> EvalRun | None:
    """The same run read by the other scorer, from ``by_scorer`` in its metrics.json and the
    ``strict_*``/``thesis_*`` fields of its predictions; None for runs logged without them."""
    by_scorer = (metrics_doc or {}).get("by_scorer") or {}
    other = {"strict": "thesis", "thesis": "strict"}.get(run.scorer)
    if other not in by_scorer or not by_scorer[other].get("per_source"):
        return None
    blocks = by_scorer[other]
    fields = ("strict_extracted", "strict_correct") if other == "strict" else ("thesis_head", "thesis_tail",
                                                                              "thesis_correct")
    if not rows or not all(k in row for row in rows for k in fields):
        rows = []  # predictions written without both scorers' fields: the other scorer's scores only
    predictions = []
    for p, row in zip(run.predictions, rows or []):
        if other == "strict":
            extracted, head, tail = row.get("strict_extracted"), None, None
            correct = bool(row.get("strict_correct"))
        else:
            head, tail = row.get("thesis_head"), row.get("thesis_tail")
            block = blocks["per_source"].get(source_name(p.source), {})
            extracted = head if block.get("head_correct", 0) > block.get("tail_correct", 0) else tail
            correct = bool(row.get("thesis_correct"))
        predictions.append(dataclasses.replace(p, extracted=extracted, correct=correct, head=head, tail=tail))
    if len(predictions) != len(run.predictions):
        predictions = []
    return dataclasses.replace(
        run, scorer=other, per_source=scores_from_metrics(blocks), predictions=predictions,
        samples=blocks.get("samples"), rescored=True,
        overall=_score("overall", blocks["overall"]) if blocks.get("overall") else None,
        notes=[*run.notes, f"{other} scorer's reading of the same outputs"])
