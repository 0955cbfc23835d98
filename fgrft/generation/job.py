"""The Stage 1 job (``python -m fgrft.generate``): questions in, training records out.

    1. select   load the source (duplicates dropped and counted), then drop every question
                that overlaps the evaluation sets, before any call (contamination guard)
    2. plan     ``dry_run=true``: print calls, tokens and dollars per step and model; stop
    3. run      start the backends (the embedded server if a role needs it), run every
                question's chain through one call engine with the crash-safe response cache
                under ``paths.cache`` and a ledger (``budget_usd``), showing progress
    4. write    records.jsonl, traces.jsonl and summary.json (always all three, even when
                nothing was kept) plus questions.jsonl (every question's outcome); summary
                counts and cost to MLflow, with the source questions and the records as inputs,
                a table row and (``traces=true``) a trace per question (fgrft.generation.traces)

Re-running the same command resumes: every call answered before (also by a run killed with
``kill -9``) is a free cache hit, so only unfinished calls are paid for. A spent budget stops
new calls cleanly: finished records are kept, unfinished questions are dropped as ``budget``,
and the command succeeds. A fatal API error (a bad key, an unknown model) ends the run as a
failure, after the files are written.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from fgrft.config import PRICES_FILE
from fgrft.data import (DataUnavailable, OverlapSettings, check_contamination, load_benchmark,
                        load_source)
from fgrft.data.benchmarks import THESIS_FILES
from fgrft.llm import (Budget, ConfigError, Engine, Ledger, Sampling, SqliteResponseCache,
                       TraceEvent, load_prices)
from fgrft.generation import plan as planning
from fgrft.generation.endpoints import ROLES, open_endpoints, role_settings
from fgrft.generation.guards import REASONS
from fgrft.generation.progress import Progress
from fgrft.generation.prompts import PromptSet, load_prompts
from fgrft.prompts import items_hash
from fgrft.generation.run import Fallback, Outcome, Pipeline, RunSettings
from fgrft.generation.traces import QuestionViews
from fgrft.generation.steps import STEPS
from fgrft.records import (DRY_RUN_FILE, QUESTIONS_FILE, RECORDS_FILE, SUMMARY_FILE, Question,
                           write_jsonl)
from fgrft.tracking import TrackedRun

log = logging.getLogger("fgrft.generate")

SCHEMA_VERSION = 1
WINDOW_PER_SLOT = 4   # most questions in flight per lane slot (memory; admission paces the rest)


@dataclass
class Selection:
    questions: list[Question]          # to run (contaminated ones removed)
    contaminated: list[Outcome]        # dropped before any call
    contamination: dict[str, Any]      # summary.json's contamination field
    duplicates_dropped: int
    origin: str
    total: int                         # questions selected from the source


def check_settings(cfg: DictConfig) -> None:
    """The user errors found without calling anything: prompts, role settings, the contamination
    check's benchmarks. The entrypoint runs it before the MLflow run opens."""
    load_prompts(cfg.recipe)
    step_sampling({role: role_settings(cfg, role) for role in ROLES})
    if cfg.max_revisions < 0:
        raise ConfigError(f"max_revisions must be >= 0, got {cfg.max_revisions}")
    if cfg.contamination.mode != "skip":  # (skip only warns, and the job does that)
        contamination_benchmarks(cfg)


def generate_job(cfg: DictConfig, tracked: TrackedRun) -> dict[str, Any]:
    started = time.monotonic()
    run_dir = tracked.job.run_dir
    prompts = load_prompts(cfg.recipe)
    # Settings errors (a missing model, a misspelt step) surface before anything starts.
    sampling = step_sampling({role: role_settings(cfg, role) for role in ROLES})
    if cfg.max_revisions < 0:
        raise ConfigError(f"max_revisions must be >= 0, got {cfg.max_revisions}")
    tracked.log_params({"recipe": cfg.recipe, "prompt_hash": prompts.combined_hash,
                        **{f"prompt_hash.{s}": h for s, h in prompts.hashes.items()}})
    benchmarks = contamination_benchmarks(cfg)
    if cfg.dry_run:
        return _dry_run(cfg, tracked, prompts, benchmarks)
    selection = select_questions(cfg, benchmarks)
    tracked.log_params({"items_hash": items_hash([q.id for q in selection.questions]),
                        "source_origin": selection.origin})
    _log_source(cfg, selection)
    ledger = Ledger(load_prices(PRICES_FILE), Budget.from_setting(cfg.budget_usd))
    views = QuestionViews(cfg.traces, tracked.run_id, ledger.prices,
                          {q.id: q for q in selection.questions})
    try:
        outcomes, stopped, fatal, batches = _execute(cfg, tracked, prompts, selection, ledger, sampling,
                                                     views)
        for outcome in selection.contaminated:
            views.finished(outcome)
    finally:
        views.close()
    outcomes = selection.contaminated + outcomes
    summary = build_summary(outcomes, selection, ledger, time.monotonic() - started, stopped)
    if batches is not None:
        summary["batches"] = batches
    _write(run_dir, outcomes, summary)
    tracked.log_metrics(summary_metrics(summary))
    views.log_table(outcomes)
    _log_records(cfg, run_dir, outcomes)
    log.info("kept %d of %d questions; dropped %s; %d calls, %d cache hits, $%.4f",
             summary["kept"], summary["questions"], summary["dropped"] or "none",
             summary["calls"], summary["cache_hits"], summary["cost_usd"])
    if fatal is not None:
        raise fatal
    return summary


# ----------------------------------------------------------------------------- 1. select


def _source_spec(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.source, resolve=True)


def _datasets_dir(cfg: DictConfig) -> str:
    return str(Path(cfg.paths.cache) / "datasets")


BENCHMARK_DIR_ENV = "FGRFT_BENCHMARK_DIR"


def reads_real_source(cfg: DictConfig) -> bool:
    """Anything but the bundled sample questions."""
    return cfg.source.name != "sample" or bool(cfg.source.path)


def contamination_benchmarks(cfg: DictConfig) -> dict[str, Any] | None:
    """The benchmark spec the contamination check runs against (None: ``contamination.mode=skip``).

    A real source is checked against every benchmark or not started at all: a run that could
    not check would pay for questions that training later drops as contaminated. So when a
    benchmark cannot be loaded here, this raises before anything is loaded or called.
    ``benchmark.dir`` falls back to ``$FGRFT_BENCHMARK_DIR``."""
    if cfg.contamination.mode == "skip":
        log.warning("contamination.mode=skip: the questions are NOT checked against the evaluation "
                    "sets; summary.json records contamination as not_checked")
        return None
    spec = OmegaConf.to_container(cfg.benchmark, resolve=True)
    if not spec.get("dir") and os.environ.get(BENCHMARK_DIR_ENV):
        spec["dir"] = os.environ[BENCHMARK_DIR_ENV]
        log.info("contamination: benchmark.dir from $%s = %s", BENCHMARK_DIR_ENV, spec["dir"])
    if not reads_real_source(cfg):
        return spec  # the bundled sample never overlaps the bundled benchmarks; check what is here
    try:
        load_benchmark(spec, cache_dir=_datasets_dir(cfg))
    except DataUnavailable as exc:
        raise ConfigError(
            f"contamination check: source={cfg.source.name} is real data, and benchmark="
            f"{spec.get('name')} cannot be loaded here: {exc}. Stage 1 refuses to start without "
            f"every benchmark it checks against (it would pay for questions training later drops): "
            f"set benchmark.dir (or ${BENCHMARK_DIR_ENV}) to the directory holding the thesis "
            f"benchmark files ({' and '.join(sorted(set(THESIS_FILES.values())))}), or opt out "
            f"explicitly with contamination.mode=skip") from None  # the message already says why
    return spec


def select_questions(cfg: DictConfig, benchmarks: dict[str, Any] | None) -> Selection:
    load = load_source(_source_spec(cfg), cache_dir=_datasets_dir(cfg))
    if load.duplicates_dropped:
        log.info("source %s: %d repeated questions dropped", load.origin, load.duplicates_dropped)
    settings = OverlapSettings(n=cfg.contamination.ngram, min_shared=cfg.contamination.min_shared_ngrams)
    if benchmarks is None:
        report: dict[str, Any] = {"not_checked": "contamination.mode=skip"}
    else:
        report = check_contamination(load.questions, benchmarks, settings,
                                     cache_dir=_datasets_dir(cfg))
    if "not_checked" in report:
        log.warning("contamination: not checked against every benchmark: %s", report["not_checked"])
    hits: dict[str, list[str]] = {}
    for o in report.get("overlaps", []):
        hits.setdefault(o["train_id"], []).append(f"{o['eval_source']}:{o['eval_id']} ({o['kind']})")
    contaminated = [Outcome(id=q.id, reason="contaminated", detail="; ".join(hits[q.id]))
                    for q in load.questions if q.id in hits]
    if contaminated:
        log.warning("contamination: %d questions overlap the evaluation sets and are dropped",
                    len(contaminated))
    return Selection(questions=[q for q in load.questions if q.id not in hits],
                     contaminated=contaminated, contamination=report,
                     duplicates_dropped=load.duplicates_dropped, origin=load.origin,
                     total=len(load.questions))


# ----------------------------------------------------------------------------- 2. plan


def _dry_run(cfg: DictConfig, tracked: TrackedRun, prompts: PromptSet,
             benchmarks: dict[str, Any] | None) -> dict[str, Any]:
    settings = {role: role_settings(cfg, role) for role in ROLES}
    notes: list[str] = []
    extra: dict[str, Any] = {}
    try:
        selection = select_questions(cfg, benchmarks)
        shape, count = selection.questions, len(selection.questions)
        extra = {"source": selection.origin, "contamination": selection.contamination,
                 "contaminated": len(selection.contaminated),
                 "duplicates_dropped": selection.duplicates_dropped}
    except DataUnavailable as exc:
        count = cfg.source.n if cfg.source.n is not None else cfg.source.limit
        if count is None:
            raise DataUnavailable(f"{exc}; a dry run can still estimate offline from the bundled "
                                  "sample: set source.n (how many questions to plan for)") from exc
        shape = load_source({"name": "sample"}).questions
        notes.append(f"the source could not be loaded here ({exc}); estimated from the bundled "
                     f"sample's {len(shape)} questions, scaled to source.n={count:,}")
        extra = {"source": None, "estimated_from": "bundled sample", "source_unavailable": str(exc)}
    plan = planning.make_plan(prompts, shape, count, settings,
                              max_revisions=cfg.max_revisions, regate=cfg.regate)
    plan.notes += notes
    est, batch = planning.price(plan), planning.price(plan, mode="batch")
    print(planning.report(plan, est, batch), flush=True)
    (tracked.job.run_dir / DRY_RUN_FILE).write_text(planning.to_json(plan, est, extra, batch))
    tracked.log_metrics({"planned_calls": est.total.calls, "estimated_cost_usd": est.total.cost_usd,
                         "questions": count})
    return est.to_dict()


# ----------------------------------------------------------------------------- 3. run


class _TraceFile:
    """traces.jsonl, one line per call attempt of this invocation (cached or not); each event
    also goes to ``also`` (the step log the MLflow traces are built from)."""

    def __init__(self, path: Path, also: Callable[[TraceEvent], None] | None = None):
        # Line-buffered: a killed run leaves whole lines, and `tail -f` shows calls as they end.
        self.f = open(path, "w", encoding="utf-8", buffering=1)
        self.also = also

    def __call__(self, event: TraceEvent) -> None:
        self.f.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
        if self.also is not None:
            self.also(event)

    def close(self) -> None:
        self.f.close()


def _execute(cfg: DictConfig, tracked: TrackedRun, prompts: PromptSet, selection: Selection,
             ledger: Ledger, sampling: dict[str, dict[str, Any]], views: QuestionViews
             ) -> tuple[list[Outcome], str | None, Exception | None, dict | None]:
    run_dir = tracked.job.run_dir
    traces = _TraceFile(run_dir / "traces.jsonl", views.on_event)
    cache = SqliteResponseCache.in_dir(cfg.paths.cache)
    try:
        if not selection.questions:
            return [], None, None, None
        with open_endpoints(cfg, run_dir) as backends:
            tracked.log_params({f"model.{r}": backends.endpoints[r].model for r in ROLES})
            views.steps.local_models = {e.model for e in backends.endpoints.values() if e.kind != "openai"}
            settings = RunSettings(
                max_tokens={r: int(backends.settings[r]["max_output_tokens"]) for r in ROLES},
                sampling=sampling,
                max_revisions=cfg.max_revisions, regate=cfg.regate, run_id=tracked.run_id)
            outcomes, fatal, batches = asyncio.run(_run(selection.questions, prompts, settings,
                                                        backends, cache, traces, ledger, views))
    finally:
        traces.close()
        cache.close()
    stopped = None
    if fatal is not None:
        stopped = f"fatal API error: {fatal}"
    elif ledger.budget is not None and any(o.reason == "budget" for o in outcomes):
        # Spent, or (mode=batch) too little left to set a batch's estimated cost aside.
        stopped = "budget"
        log.warning("budget_usd=%g spent: unfinished questions dropped as 'budget'; re-run with a "
                    "larger budget_usd to continue (finished calls are cached)", cfg.budget_usd)
    return outcomes, stopped, fatal, batches


def step_sampling(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each step's sampling keys from its role's ``steps``; a step name the role does not run
    is an error (a typo such as ``p6`` must not leave a step on server defaults unnoticed)."""
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        own = [name for name, step in STEPS.items() if step.role == role]
        for name, keys in (settings[role].get("steps") or {}).items():
            if name not in own:
                raise ConfigError(f"{role}.steps.{name}: the {role} runs steps {', '.join(own)}")
            out[name] = dict(keys or {})
            Sampling.from_mapping(out[name])  # refuses misspelt sampling keys now
    return out


async def _run(questions, prompts, settings, backends, cache, traces, ledger, views):
    async with Engine(cache=cache, trace=traces, ledger=ledger) as engine:
        # Recording endpoints: each step call's timing, input and output, for the traces.
        endpoints = {r: views.steps.wrap(engine.endpoint(backends.endpoints[r])) for r in ROLES}
        fallback = None
        if backends.fallback is not None:
            fallback = Fallback(views.steps.wrap(engine.endpoint(backends.fallback)),
                                backends.fallback_temperature, backends.after_failures)
        for lane_key, client in backends.batch_clients.items():
            engine.batcher.use_client(lane_key, client)
        pipeline = Pipeline(endpoints, prompts, settings, fallback)
        slots = sum(lane.concurrency for lane in engine.lanes.values())
        progress = Progress(len(questions), ledger)

        def finished(outcome: Outcome) -> None:
            progress.finished(outcome)
            views.finished(outcome)

        outcomes = await progress.run_while(
            pipeline.run_all(questions, window=WINDOW_PER_SLOT * slots, on_outcome=finished))
        # mode=batch: rounds, batches and rows submitted (and resubmitted) by this invocation.
        batches = engine.batcher.stats.to_dict() if engine.batcher is not None else None
        return outcomes, pipeline.fatal, batches


# ----------------------------------------------------------------------------- 4. write


def build_summary(outcomes: list[Outcome], selection: Selection, ledger: Ledger, wall_s: float,
                  stopped: str | None) -> dict[str, Any]:
    dropped = Counter(o.reason for o in outcomes if not o.kept)
    verdicts: dict[str, Any] = {}
    for o in outcomes:
        for label, verdict in o.verdicts.items():
            group = "gate_recheck" if label.startswith("gate_rev") else label
            verdicts.setdefault(group, Counter())[verdict] += 1
    verdicts = {k: dict(v) for k, v in verdicts.items()}
    verdicts["p2_contradicts_gold"] = sum(o.p2_contradicts_gold for o in outcomes)
    gated = sum("gate" in o.verdicts for o in outcomes)
    revised = sum(1 for o in outcomes if o.revised)
    return {
        "schema_version": SCHEMA_VERSION,
        "questions": selection.total,
        "kept": sum(o.kept for o in outcomes),
        "dropped": {r: dropped[r] for r in REASONS if dropped[r]},
        "verdicts": verdicts,
        "revision_rate": round(revised / gated, 4) if gated else 0.0,
        "final_uncommitted": sum(o.kept and o.final_uncommitted for o in outcomes),
        **ledger.summary(),
        "wall_s": round(wall_s, 2),
        "contamination": selection.contamination,
        # Not contract fields: what else a reader needs to trust the counts.
        "revised": revised,
        "fallbacks": sum(o.fallbacks for o in outcomes),
        "duplicates_dropped": selection.duplicates_dropped,
        "stopped": stopped,
    }


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    metrics = {k: summary[k] for k in ("questions", "kept", "revision_rate", "final_uncommitted",
                                       "calls", "cache_hits",
                                       "cost_usd", "wall_s", "revised", "fallbacks",
                                       "duplicates_dropped")}
    metrics["dropped"] = sum(summary["dropped"].values())
    metrics.update({f"dropped/{r}": summary["dropped"].get(r, 0) for r in REASONS})
    return metrics


def _write(run_dir: Path, outcomes: list[Outcome], summary: dict[str, Any]) -> None:
    write_jsonl(run_dir / RECORDS_FILE, [o.record for o in outcomes if o.kept])
    write_jsonl(run_dir / QUESTIONS_FILE, [o.to_dict() for o in outcomes])
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run_dir / SUMMARY_FILE)


def _log_source(cfg: DictConfig, selection: Selection) -> None:
    """The source questions this run works on, as its MLflow input (context ``source``)."""
    from fgrft.data import bundled_path
    from fgrft.mlflow_lineage import SOURCE, log_dataset

    src = cfg.source
    if src.get("path"):
        origin, hub = str(src.path), False
    elif src.get("hub_id"):
        origin, hub = str(src.hub_id), True
    elif src.name == "sample":
        origin, hub = str(bundled_path("source_sample.json")), False
    else:
        origin, hub = selection.origin, False
    ids = [q.id for q in selection.questions]
    log_dataset(src.name, origin, items_hash(ids), ids, SOURCE, sources=[q.source for q in selection.questions],
                hub=hub)


def _log_records(cfg: DictConfig, run_dir: Path, outcomes: list[Outcome]) -> None:
    """The kept records this run wrote, as an MLflow input in context ``records``."""
    from fgrft.mlflow_lineage import RECORDS, log_dataset

    path = run_dir / RECORDS_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    log_dataset(f"{cfg.source.name} records", str(path), digest, [o.id for o in outcomes if o.kept], RECORDS)
