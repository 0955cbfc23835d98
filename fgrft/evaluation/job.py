"""One evaluation job: items -> prompts -> completions -> scored predictions -> files.

Everything that can be wrong with the input (benchmark, gold letters, model
path, prompt template) is checked before a model loads. Completions are kept
as they finish, so re-running the same command resumes.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fgrft.data import load_benchmark
from fgrft.data.benchmarks import benchmark_items
from fgrft.prompts import items_hash, load_template, prompt_hash, render, render_all
from fgrft.evaluation.backends.replay import check_replay_file, load_replay, replay_lineage
from fgrft.evaluation.requests import (
    Completion,
    CompletionSink,
    GenerationRequest,
    Sampling,
    sample_key,
    request_seed,
)
from fgrft.records import (DRY_RUN_FILE, LINEAGE_FILE, METRICS_FILE, PREDICTIONS_FILE, SCORER_AUDIT_FILE, Prediction,
                           Question, write_jsonl)
from fgrft.scoring import mlflow_metrics, score_predictions
from fgrft.tracking import TrackedRun

log = logging.getLogger(__name__)

LINEAGE_KEYS = ("base_model", "data_hash", "train_run_id")


def check_inputs(cfg: DictConfig) -> None:
    """The user errors found without loading anything: the prompt template, a replay's file and
    a local backend's model entry. The entrypoint runs it before the MLflow run opens."""
    load_template(cfg.prompt.template)
    if cfg.inference.backend == "replay":
        check_replay_file(cfg.inference.path)
    elif cfg.inference.backend != "openai":  # an API model is only a label
        from fgrft.models.resolve import check_model_spec

        check_model_spec(OmegaConf.to_container(cfg.model, resolve=True), cfg.scale)


def run_evaluation(cfg: DictConfig, tracked: TrackedRun) -> dict[str, Any]:
    run_dir = tracked.job.run_dir
    template = load_template(cfg.prompt.template)
    backend = cfg.inference.backend
    throughput: dict[str, float | None] | None = None
    checkpoint_lineage: dict[str, Any] = {}
    if backend == "replay":
        predictions = load_replay(cfg.inference.path, lambda q, o: render(template, _question(q, o)))
        prompts = [p.prompt for p in predictions if p.sample == 0]
        checkpoint_lineage = replay_lineage(cfg.inference.path, cfg.model.get("path"))
    else:
        questions = benchmark_items(load_benchmark(OmegaConf.to_container(cfg.benchmark, resolve=True),
                                                   cache_dir=str(Path(cfg.paths.cache) / "datasets")))
        if not questions:
            raise ValueError(f"benchmark {cfg.benchmark.name!r} has no items")
        prompts = render_all(template, questions)
        # With an API backend the model is only a label: nothing is resolved or built.
        # Otherwise a missing model.path fails here, before anything loads.
        model_path, checkpoint_lineage = (None, {}) if backend == "openai" else _resolve_model(cfg)
        generated = _generate(cfg, tracked, model_path, questions, prompts, run_dir)
        if generated is None:  # a dry run: planned and priced, nothing scored
            return {}
        predictions, throughput = generated

    scored = score_predictions(predictions, cfg.scorer.name, prompt=cfg.prompt.name, throughput=throughput,
                               seed=cfg.temperature.seed)
    rows = [{**p.to_dict(), **both} for p, both in zip(scored.predictions, scored.by_scorer)]
    if cfg.scorer.name == "thesis":  # every line keeps head/tail, null for dropped empty outputs
        rows = [{**row, "head": p.head, "tail": p.tail} for row, p in zip(rows, scored.predictions)]
    write_jsonl(run_dir / PREDICTIONS_FILE, rows)
    (run_dir / METRICS_FILE).write_text(json.dumps(scored.metrics, indent=2))
    write_jsonl(run_dir / SCORER_AUDIT_FILE, scored.audit)
    if checkpoint_lineage:  # kept beside the predictions, so a replay of this run keeps its arm
        (run_dir / LINEAGE_FILE).write_text(json.dumps(checkpoint_lineage, indent=2) + "\n")
    lineage = {k: checkpoint_lineage.get(k) for k in LINEAGE_KEYS} if checkpoint_lineage else {}

    ids = [p.id for p in predictions if p.sample == 0]
    tracked.log_params({
        "model_label": cfg.model.name,
        "benchmark": cfg.benchmark.name if backend != "replay" else f"replay:{_replay_name(cfg.inference.path)}",
        "temperature": cfg.temperature.temperature,
        "scorer": cfg.scorer.name,
        "prompt_hash": prompt_hash(template, prompts),
        "items_hash": items_hash(ids),
        **lineage,
    })
    tracked.log_metrics(mlflow_metrics(scored.metrics))
    _log_lineage_and_table(cfg, scored, rows, lineage)
    overall = scored.metrics["overall"]
    log.info("%s scorer: accuracy %.4f (%d/%d, %d unparsed) [%.4f, %.4f]", cfg.scorer.name, overall["accuracy"],
             overall["correct"], overall["total"], overall["unparsed"], overall["ci_low"], overall["ci_high"])
    return scored.metrics


def _replay_name(path: str) -> str:
    p = Path(path)
    return p.name if p.is_file() else f"{p.name}/predictions.jsonl"


# The per-item table: what a reader checks first when an accuracy looks odd. Both scorers'
# columns appear where the predictions carry them.
PREDICTION_COLUMNS = ("id", "source", "sample", "gold", "extracted", "correct", "unparsed",
                      "strict_extracted", "strict_correct", "thesis_head", "thesis_tail", "thesis_correct",
                      "head", "tail", "finish_reason", "output")
PREDICTIONS_TABLE = "predictions_table.json"


def benchmark_origin(cfg: DictConfig) -> tuple[str, str, bool]:
    """(dataset name, where the items came from, whether that is a hub id)."""
    if cfg.inference.backend == "replay":
        return f"replay:{Path(cfg.inference.path).name}", str(cfg.inference.path), False
    b = cfg.benchmark
    if b.get("path"):
        return b.name, str(b.path), False
    if b.get("dir"):
        return b.name, str(b.dir), False
    if b.name == "sample":
        from fgrft.data import bundled_path
        from fgrft.data.benchmarks import SAMPLE_FILE

        return b.name, str(bundled_path(SAMPLE_FILE)), False
    if b.get("hub_id"):
        return b.name, str(b.hub_id), True
    return b.name, f"benchmark={b.name}", False


def _log_lineage_and_table(cfg: DictConfig, scored: Any, rows: list[dict[str, Any]],
                           lineage: dict[str, Any]) -> None:
    from fgrft.mlflow_lineage import EVAL, checkpoint_model_id, link_model, log_dataset, log_table

    first = [p for p in scored.predictions if p.sample == 0]
    ids = [p.id for p in first]
    name, origin, hub = benchmark_origin(cfg)
    ds = log_dataset(name, origin, items_hash(ids), ids, EVAL, sources=[p.source for p in first], hub=hub)
    model_id = checkpoint_model_id(lineage.get("train_run_id"))
    if model_id is not None:
        link_model(model_id, mlflow_metrics(scored.metrics), ds)
    table = [{**row, "gold": row.get("answer_idx"), "unparsed": row.get("extracted") is None} for row in rows]
    columns = [c for c in PREDICTION_COLUMNS if c in table[0]] if table else list(PREDICTION_COLUMNS)
    log_table(table, columns, PREDICTIONS_TABLE)


def _question(question: str, options: dict[str, str]) -> Question:
    return Question(source="", question=question, options=options, answer_idx=next(iter(options)), answer="")


def _resolve_model(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    from fgrft.models.resolve import resolve_model

    resolved = resolve_model(OmegaConf.to_container(cfg.model, resolve=True), Path(cfg.paths.cache),
                             scale=cfg.scale)
    path = resolved.location
    lineage_file = Path(path) / LINEAGE_FILE
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
    return str(path), lineage


def _check_fingerprint(cfg: DictConfig, model_path: str | None, requests: list[GenerationRequest], scope: str,
                       run_dir: Path) -> None:
    """Refuse kept completions made from other prompts, sampling or weights (see fgrft.evaluation.resume).

    Local backends get their prompt token ids here, from the model's own chat template; an API
    server applies its own template to the messages."""
    from fgrft.evaluation.resume import check_or_record, fingerprint, weights_identity

    t = cfg.temperature
    sampling = {"temperature": t.temperature, "top_p": t.top_p, "max_new_tokens": t.max_new_tokens,
                "n_samples": t.n_samples, "seed": t.seed}
    if cfg.inference.backend == "openai":
        endpoint = {"model": cfg.inference.model, "base_url": cfg.inference.base_url, "cache_scope": scope}
        prompts = [endpoint, *(r.messages for r in requests)]
        weights = {"api_model": cfg.inference.model}
    else:
        from fgrft.evaluation.backends import encode_requests

        encode_requests(model_path, requests)
        prompts = [r.prompt_token_ids for r in requests]
        weights = weights_identity(model_path, OmegaConf.to_container(cfg.model, resolve=True))
    check_or_record(run_dir, fingerprint(prompts=prompts, sampling=sampling, weights=weights))


def _generate(cfg: DictConfig, tracked: TrackedRun, model_path: str | None, questions: list[Question],
              prompts: list[str], run_dir: Path) -> tuple[list[Prediction], dict[str, float | None]] | None:
    from fgrft.evaluation.backends import run_backend

    t = cfg.temperature
    sampling = Sampling(temperature=t.temperature, top_p=t.top_p, max_tokens=t.max_new_tokens)
    requests = [
        GenerationRequest(key=sample_key(q.id, s), messages=[{"role": "user", "content": text}],
                          seed=request_seed(t.seed, q.id, s))
        for q, text in zip(questions, prompts) for s in range(t.n_samples)
    ]
    api = cfg.inference.backend == "openai"
    scope = ""
    if api:
        from fgrft.evaluation.backends.openai import evaluation_cache_scope

        scope = evaluation_cache_scope(cfg.model, cfg.inference)
    if not cfg.get("dry_run"):
        _check_fingerprint(cfg, model_path, requests, scope, run_dir)
    sink = CompletionSink.in_dir(run_dir)
    done = sink.done()
    pending = [r for r in requests if r.key not in done]
    if done:
        log.info("resuming: %d of %d completions already on disk", len(requests) - len(pending), len(requests))
    ledger = None
    if api:
        from fgrft.evaluation.backends.openai import estimate_openai
        from fgrft.config import PRICES_FILE
        from fgrft.llm import Budget, Ledger, load_prices

        if cfg.get("dry_run"):
            estimate = estimate_openai(cfg.inference, pending, sampling, cache_dir=cfg.paths.cache,
                                       cache_scope=scope)
            print(estimate.format())
            (run_dir / DRY_RUN_FILE).write_text(json.dumps(estimate.to_dict(), indent=2))
            return None
        ledger = Ledger(load_prices(PRICES_FILE), Budget.from_setting(cfg.get("budget_usd")))
    elif cfg.get("dry_run"):
        raise ValueError("dry_run plans API spending: it applies to inference=openai only")
    throughput: dict[str, float | None] = {"items_per_s": None, "output_tokens_per_s": None}
    if pending:
        started = time.perf_counter()
        try:
            run_backend(cfg.inference, model_path, pending, sampling, sink, run_dir, cache_dir=cfg.paths.cache,
                        ledger=ledger, cache_scope=scope)
        finally:
            if ledger is not None:
                tracked.log_metrics({"cost_usd": ledger.cost_usd, "api_calls": ledger.calls,
                                     "cache_hits": ledger.cache_hits})
        wall = time.perf_counter() - started
        done = sink.done()
        new_tokens = sum(done[r.key].output_tokens for r in pending if r.key in done)
        throughput = {"items_per_s": len(pending) / wall, "output_tokens_per_s": new_tokens / wall}
    missing = [r.key for r in requests if r.key not in done]
    if missing:
        raise RuntimeError(f"backend {cfg.inference.backend} returned no completion for {len(missing)} requests "
                           f"(first: {missing[0]}); re-run the same command to retry them")
    predictions = []
    for q, text in zip(questions, prompts):
        for s in range(t.n_samples):
            c: Completion = done[sample_key(q.id, s)]
            predictions.append(Prediction(id=q.id, source=q.source, sample=s, question=q.question,
                                          options=dict(q.options), answer_idx=q.answer_idx, prompt=text,
                                          output=c.text, finish_reason=c.finish_reason))
    return predictions, throughput
