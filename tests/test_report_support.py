"""Builders for the report tests: evaluation runs with known answers.

Predictions are real :class:`fgrft.records.Prediction` records whose outputs
say "The answer is X." with X the gold letter (a hit) or the next letter (a
miss), scored by the project's own scorer, so metrics.json is what an
evaluation run would write. The two tests at the bottom pin the builders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from fgrft.prompts import items_hash
from fgrft.records import Prediction, Question, write_jsonl
from fgrft.reporting.eval_runs import EvalRun, eval_run_from_logged
from fgrft.scoring import score_predictions

LETTERS = "ABCDEFGH"
# Training-data params per arm, as a training run logs them (flattened config).
ARM_PARAMS = {
    "fgrft": {"data.format": "fgrft", "data.target_format": "thinking", "data.name": "fgrft_5k"},
    "naive_cot_raw": {"data.format": "naive_cot", "data.target_format": "raw", "data.name": "naive_cot_5k"},
    "naive_cot_thinking": {"data.format": "naive_cot", "data.target_format": "thinking",
                           "data.name": "naive_cot_5k_structured"},
}


def questions(source: str, n: int, n_options: int = 4, golds: str | None = None) -> list[Question]:
    """n items of one source; gold letters cycle A, B, C, ... unless `golds` spells them out."""
    letters = LETTERS[:n_options]
    out = []
    for i in range(n):
        gold = golds[i] if golds else letters[i % n_options]
        options = {k: f"{source} option {k} of item {i}" for k in letters}
        out.append(Question(source=source, question=f"{source} question number {i}?", options=options,
                            answer_idx=gold, answer=options[gold]))
    return out


def outputs(qs: list[Question], hit: Callable[[int], bool] | set[int], empty: Iterable[int] = ()) -> list[str]:
    hit_fn = hit if callable(hit) else (lambda i, s=frozenset(hit): i in s)
    empty = set(empty)
    out = []
    for i, q in enumerate(qs):
        letters = sorted(q.options)
        wrong = letters[(letters.index(q.answer_idx) + 1) % len(letters)]
        if i in empty:
            out.append("")
        else:
            out.append(f"Let me think. The answer is {q.answer_idx if hit_fn(i) else wrong}.")
    return out


def scored(qs: list[Question], texts: list[str], scorer: str) -> tuple[list[Prediction], dict]:
    preds = [Prediction(id=q.id, source=q.source, sample=0, question=q.question, options=dict(q.options),
                        answer_idx=q.answer_idx, prompt=f"prompt {i}", output=t)
             for i, (q, t) in enumerate(zip(qs, texts))]
    result = score_predictions(preds, scorer, prompt="thesis", audit=False)
    return result.predictions, result.metrics


def logged_params(qs: list[Question], *, model: str, temperature: float, scorer: str, prompt: str = "thesis",
                  prompt_hash: str = "prompt-v1", scale: str = "full", seed: int = 42,
                  extra: dict | None = None) -> dict[str, str]:
    """The params an evaluation run logs (a subset of the flattened config plus the named ones)."""
    params = {
        "model_label": model, "model.name": model, "benchmark": "all", "temperature": str(temperature),
        "temperature.temperature": str(temperature), "temperature.seed": str(seed), "scorer": scorer,
        "scorer.name": scorer, "prompt.name": prompt, "prompt_hash": prompt_hash,
        "items_hash": items_hash([q.id for q in qs]), "scale": scale,
    }
    params.update(extra or {})
    return params


def make_run(name: str, qs: list[Question], hit, *, model: str = "llama31_8b_instruct", arm: str = "base",
             temperature: float = 0.5, scorer: str = "thesis", prompt_hash: str = "prompt-v1",
             scale: str = "full", trainer_seed: int = 42, empty: Iterable[int] = (),
             shuffle: bool = False) -> EvalRun:
    """An in-memory EvalRun built exactly as collect builds one from MLflow."""
    preds, metrics = scored(qs, outputs(qs, hit, empty), scorer)
    if shuffle:  # the join must go by id, not by position
        preds = preds[::-1]
    train = {**ARM_PARAMS[arm], "trainer.seed": str(trainer_seed)} if arm != "base" else None
    params = logged_params(qs, model=model, temperature=temperature, scorer=scorer, prompt_hash=prompt_hash,
                           scale=scale, extra={"train_run_id": f"train-{name}"} if train else None)
    return eval_run_from_logged(run_id=f"{name}-0000000000", name=name, experiment="test", params=params,
                                tags={"stage": "evaluate", "sweep_id": "s1"}, metrics_doc=metrics,
                                predictions=preds, train_params=train)


def write_artifacts(directory: Path, preds: list[Prediction], metrics: dict) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "predictions.jsonl", preds)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return [directory / "predictions.jsonl", directory / "metrics.json"]


def test_builders_give_the_intended_hits():
    qs = questions("MedQA_sample", 10)
    preds, metrics = scored(qs, outputs(qs, {0, 3, 4}), "strict")
    assert [p.correct for p in preds] == [i in {0, 3, 4} for i in range(10)]
    assert metrics["per_source"]["MedQA_sample"]["correct"] == 3


def test_thesis_scorer_drops_empty_outputs_from_the_builders():
    qs = questions("PubMedQA_sample", 6, n_options=3)
    _, metrics = scored(qs, outputs(qs, {0, 1}, empty={5}), "thesis")
    block = metrics["per_source"]["PubMedQA_sample"]
    assert (block["correct"], block["total"], block["dropped_empty"]) == (2, 5, 1)
