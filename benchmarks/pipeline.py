"""Benchmark: the Stage 1 pipeline end to end against the fault server.

    python -m benchmarks.pipeline [--questions 500] [--concurrency 64] [--latency-s 0.2]
                                   [--mix fixed|realistic] [--json FILE]
    python -m benchmarks.pipeline --mode batch [--questions 500] [--mix realistic]

Runs the real command (``python -m fgrft.generate generator=vllm_local verifier=vllm_local``)
on ``--questions`` questions (the bundled sample repeated, each copy a distinct question)
against a fault server in its own process that answers every call after a fixed latency,
without faults, with schema-valid JSON for each step.

Two mixes of answers:

* ``fixed``: :class:`StepResponder` (the gate passes, the decision and final response name
  the gold letter), so every chain runs the full six steps and every question is kept.
* ``realistic``: :class:`MixResponder`, seeded by the request's content (so a re-run asks
  and gets the same): random P2 verdicts, the gate sends about a third of the chains back
  (a revision), and some chains are dropped at each guard (a decision or a final answer off
  the gold, a P4 carrying a target heading); some verifier answers are unusable every time,
  so the engine re-asks and the verifier's fallback model answers. Chains end early, revise
  or fall back, so questions finish at very different times.

The span is measured by the server: first request received to last response sent. The
latency-bound ideal is ``max(calls * latency / concurrency, longest chain * latency)``, where
the longest chain is the most calls one question made in sequence and the latency is the
configured one. Lane utilisation is the server's mean number of requests in flight over the
span, divided by the concurrency. Also reported: the server's own mean time per request
(the configured latency plus its parsing and answering) and the load average before and
after the run, since the span depends on the CPU time the two processes get.
Target: span within 1.1x the ideal and utilisation at least 90%, on both mixes. A second run
of the same command must send nothing (all cache hits).

``--mode batch`` runs the same command with ``generator.mode=batch verifier.mode=batch``
against the batch fixture (:mod:`tests.support.batch_server`, answering rows with the same
responders) whose first batch expires part-way and whose second has failing rows. It reports
rounds, batches, rows submitted and resubmitted and the wall time, and checks that every
question reaches an outcome, that only rows which failed or never ran were submitted again,
and that a re-run creates no batch.

In sync mode, ``--tracing-repeats`` fresh runs each with ``traces=false`` and ``traces=true``
(interleaved) compare the median spans: with tracing on, the span must stay within 5% of off.

:class:`StepResponder` and :class:`MixResponder` live in :mod:`tests.support.step_responder`,
where the pipeline tests answer with them too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.fault_server import ServerProcess
from tests.support.step_responder import FALLBACK_MODEL, MODEL, MixResponder, StepResponder, write_questions


# ----------------------------------------------------------------------------- the run


def generate_command(base_url: str, source: Path, concurrency: int, mix: str = "fixed") -> list[str]:
    command = [sys.executable, "-m", "fgrft.generate", "generator=vllm_local", "verifier=vllm_local",
               f"generator.base_url={base_url}", f"verifier.base_url={base_url}",
               f"generator.model={MODEL}", f"verifier.model={MODEL}",
               f"generator.concurrency={concurrency}", f"verifier.concurrency={concurrency}",
               f"source.path={source}", "benchmark=sample"]
    if mix == "realistic":
        # The fallback model is another lane on the same server (as gpt-4o is for gpt-5).
        command.append(f"verifier.fallback={{model: {FALLBACK_MODEL}, temperature: 0.3, "
                       "after_failures: 1}")
    return command


def _util_server(latency_s: float, responder):
    from benchmarks.engine_throughput import SpanServer

    class UtilServer(SpanServer):
        """Also integrates the number of requests in flight over time (lane utilisation)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.busy_s = 0.0
            self._inside = 0
            self._mark: float | None = None
            self.timeline: list[tuple[float, int]] = []   # (time, requests in flight from then on)

        def _tick(self, delta: int) -> None:
            now = time.monotonic()
            if self._mark is not None:
                self.busy_s += self._inside * (now - self._mark)
            self._mark, self._inside = now, self._inside + delta
            self.timeline.append((now, self._inside))

        async def _chat(self, headers, raw, reader, writer):
            self._tick(+1)
            try:
                return await super()._chat(headers, raw, reader, writer)
            finally:
                self._tick(-1)

        def stats(self) -> dict:
            return {**super().stats(), "busy_s": self.busy_s, "timeline": self.timeline}

    return UtilServer(latency_s=latency_s, responder=responder, models=(MODEL, FALLBACK_MODEL))


def serve(latency_s: float, mix: str) -> None:
    _util_server(latency_s, MixResponder() if mix == "realistic" else StepResponder()).serve_forever()


class Workspace:
    """A fresh directory (new MLflow store, empty cache) holding ``questions`` source questions,
    where ``generate`` runs the pipeline command as the user would."""

    def __init__(self, root: Path, questions: int):
        self.root, self.source = root, root / "questions.json"
        write_questions(self.source, questions)
        self.env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.env.setdefault("HF_HUB_OFFLINE", "1")

    def generate(self, command: list[str], what: str, timeout: int = 900) -> float:
        """Run ``command``; its wall time in seconds."""
        started = time.perf_counter()
        r = subprocess.run(command, cwd=self.root, env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return time.perf_counter() - started

    def summary_path(self) -> Path:
        (path,) = list((self.root / "outputs").rglob("summary.json"))
        return path


def run(questions: int, concurrency: int, latency_s: float, mix: str = "fixed") -> dict:
    out: dict[str, Any] = {"questions": questions, "concurrency": concurrency,
                           "latency_s": latency_s, "mix": mix, "cpus": os.cpu_count()}
    server_args = ["-m", "benchmarks.pipeline", "--serve", "--latency-s", str(latency_s),
                   "--mix", mix]
    with tempfile.TemporaryDirectory(prefix="fgrft-bench-pipeline-") as tmp, \
            ServerProcess(server_args) as server:
        ws = Workspace(Path(tmp), questions)
        command = generate_command(server.base_url, ws.source, concurrency, mix)
        out["loadavg_before"] = os.getloadavg()
        out["command_wall_s"] = ws.generate(command, "generate")
        out["loadavg_after"] = os.getloadavg()
        stats = server.stats()
        summary_path = ws.summary_path()
        summary = json.loads(summary_path.read_text())
        traces = [json.loads(line) for line in (summary_path.parent / "traces.jsonl").open()]
        chains = Counter(t["id"] for t in traces if not t["cached"])
        out.update(calls=stats["total"], span_s=stats["span_s"], peak_in_flight=stats["peak_in_flight"],
                   kept=summary["kept"], dropped=summary["dropped"], longest_chain=max(chains.values()),
                   revised=summary["revised"], fallbacks=summary["fallbacks"],
                   generate_wall_s=summary["wall_s"],
                   utilisation=stats["busy_s"] / (concurrency * stats["span_s"]),
                   server_mean_s=stats["busy_s"] / stats["total"])
        # Where the idle slots are: before the drain (the last longest-chain x latency
        # seconds, when unfinished chains are too few to fill the lanes) or during it.
        drain_s = out["longest_chain"] * latency_s
        out["utilisation_before_drain"], out["utilisation_drain"] = _split_utilisation(
            stats["timeline"], drain_s, concurrency)

        rerun_s = ws.generate(command, "cached re-run")
        again = json.loads(summary_path.read_text())
        out.update(cached_rerun_wall_s=rerun_s,
                   cached_server_calls=server.stats()["total"] - stats["total"],
                   cached_hits=again["cache_hits"], cached_kept=again["kept"])

    out["ideal_s"] = max(out["calls"] * latency_s / concurrency, out["longest_chain"] * latency_s)
    out["span_over_ideal"] = out["span_s"] / out["ideal_s"]
    out["target_met"] = out["span_over_ideal"] <= 1.1 and out["utilisation"] >= 0.9
    return out


def _split_utilisation(timeline: list, tail_s: float, concurrency: int) -> tuple[float, float]:
    if len(timeline) < 2:
        return 0.0, 0.0
    start, end = timeline[0][0], timeline[-1][0]
    cut = max(start, end - tail_s)
    area = [0.0, 0.0]
    for (t0, n), (t1, _) in zip(timeline, timeline[1:]):
        for i, (lo, hi) in enumerate(((start, cut), (cut, end))):
            overlap = min(t1, hi) - max(t0, lo)
            if overlap > 0:
                area[i] += n * overlap
    before = area[0] / (concurrency * (cut - start)) if cut > start else 0.0
    drain = area[1] / (concurrency * (end - cut)) if end > cut else 0.0
    return before, drain


def run_batch(questions: int, mix: str, delay_s: float, poll_s: float) -> dict:
    out: dict[str, Any] = {"questions": questions, "mix": mix, "mode": "batch",
                           "batch_delay_s": delay_s, "poll_s": poll_s, "cpus": os.cpu_count()}
    expire_first = questions // 4
    server_args = ["-m", "tests.support.batch_server", "--mix", mix, "--delay-s", str(delay_s),
                   "--expire-first", str(expire_first), "--fail-rows", "7"]
    with tempfile.TemporaryDirectory(prefix="fgrft-bench-batch-") as tmp, \
            ServerProcess(server_args) as server:
        ws = Workspace(Path(tmp), questions)
        command = generate_command(server.base_url, ws.source, 64, mix) + [
            "generator.mode=batch", "verifier.mode=batch",
            f"generator.batch_poll_s={poll_s}", f"verifier.batch_poll_s={poll_s}"]
        out["command_wall_s"] = ws.generate(command, "generate", timeout=1800)
        stats = server.stats()
        summary_path = ws.summary_path()
        summary = json.loads(summary_path.read_text())
        out.update(kept=summary["kept"], dropped=summary["dropped"], generate_wall_s=summary["wall_s"],
                   outcomes=summary["kept"] + sum(summary["dropped"].values()),
                   batches=summary["batches"], server=stats, sync_calls=stats["total"],
                   revised=summary["revised"], fallbacks=summary["fallbacks"],
                   cost_usd=summary["cost_usd"])
        rerun_s = ws.generate(command, "re-run")
        again = json.loads(summary_path.read_text())
        out.update(rerun_wall_s=rerun_s,
                   rerun_new_batches=server.stats()["creates"] - stats["creates"],
                   rerun_cache_hits=again["cache_hits"], rerun_kept=again["kept"])
    b = out["batches"]
    out["checks"] = {
        "every_question_has_an_outcome": out["outcomes"] == questions,
        "only_unanswered_rows_sent_again": stats["rows_sent_again"] == b["rows_resubmitted"],
        "rerun_creates_no_batch": out["rerun_new_batches"] == 0,
    }
    return out


def report_batch(r: dict) -> str:
    b, s = r["batches"], r["server"]
    return "\n".join([
        f"pipeline, mode=batch: {r['questions']} questions, {r['mix']} mix, fixture batches take "
        f"{r['batch_delay_s']} s, poll every {r['poll_s']} s (backing off), {r['cpus']} CPUs",
        f"  outcomes   kept {r['kept']}, dropped {r['dropped'] or 'none'} (revised {r['revised']}, "
        f"fallbacks {r['fallbacks']})",
        f"  rounds     {b['rounds']}; batches created {b['batches']} (fixture: {s['statuses']})",
        f"  rows       submitted {b['rows_submitted']:,}, resubmitted {b['rows_resubmitted']:,} "
        f"(fixture: {s['rows']:,} rows, {s['distinct_rows']:,} distinct, "
        f"{s['rows_sent_again']:,} sent again); refusals {b['token_limit_refusals']}",
        f"  wall       {r['generate_wall_s']:.1f} s job, {r['command_wall_s']:.1f} s command",
        f"  re-run     {r['rerun_wall_s']:.1f} s, {r['rerun_new_batches']} new batches, "
        f"{r['rerun_cache_hits']:,} cache hits, kept {r['rerun_kept']}",
        f"  checks     {r['checks']}",
    ])


def report(r: dict) -> str:
    return "\n".join([
        f"pipeline: {r['questions']} questions, {r['mix']} mix, concurrency {r['concurrency']}, "
        f"server latency {r['latency_s'] * 1000:.0f} ms, {r['cpus']} CPUs",
        f"  calls {r['calls']:,} (kept {r['kept']}, dropped {r['dropped'] or 'none'}, revised "
        f"{r['revised']}, fallbacks {r['fallbacks']}), longest chain {r['longest_chain']} calls, "
        f"server peak {r['peak_in_flight']} in flight",
        f"  ideal      {r['ideal_s']:7.2f} s = max(calls x latency / concurrency, longest chain x latency)"
        f"; server's mean time per request {r['server_mean_s'] * 1000:.1f} ms",
        f"  span       {r['span_s']:7.2f} s server side ({r['generate_wall_s']:.2f} s job wall, "
        f"{r['command_wall_s']:.2f} s command wall)",
        f"  ratio      {r['span_over_ideal']:.3f}; lane utilisation {r['utilisation']:.1%} "
        f"(target <= 1.1 and >= 90%: {'met' if r['target_met'] else 'NOT met'})",
        f"  idle where {r['utilisation_before_drain']:.1%} busy before the drain, "
        f"{r['utilisation_drain']:.1%} in it (the last longest-chain x latency seconds)",
        f"  re-run     {r['cached_rerun_wall_s']:.2f} s command wall, {r['cached_server_calls']} "
        f"server calls, {r['cached_hits']:,} cache hits, kept {r['cached_kept']}",
        f"  load avg   {_load(r['loadavg_before'])} before the run, {_load(r['loadavg_after'])} after "
        f"(1/5/15 min, {r['cpus']} CPUs)",
    ])


def _load(loadavg) -> str:
    return "/".join(f"{x:.2f}" for x in loadavg)


def traced_span(questions: int, concurrency: int, latency_s: float, traces: bool) -> dict:
    """One fresh run (empty cache, new store) with ``traces=true|false``: server span, command wall."""
    with tempfile.TemporaryDirectory(prefix="fgrft-bench-traces-") as tmp, \
            ServerProcess(["-m", "benchmarks.pipeline", "--serve", "--latency-s", str(latency_s)]) as server:
        ws = Workspace(Path(tmp), questions)
        command = [*generate_command(server.base_url, ws.source, concurrency), f"traces={str(traces).lower()}"]
        wall = ws.generate(command, f"generate traces={traces}")
        return {"span_s": server.stats()["span_s"], "command_wall_s": wall}


def tracing_overhead(questions: int, concurrency: int, latency_s: float, repeats: int = 3) -> dict:
    """Spans with tracing on and off, interleaved (off, on, off, on, ...), medians of ``repeats``."""
    import statistics

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(repeats):
        for mode in ("off", "on"):
            runs[mode].append(traced_span(questions, concurrency, latency_s, traces=mode == "on"))
    out = {f"{mode}_{key}": statistics.median(r[key] for r in rs)
           for mode, rs in runs.items() for key in ("span_s", "command_wall_s")}
    out["repeats"] = repeats
    out["span_on_over_off"] = out["on_span_s"] / out["off_span_s"]
    out["target_met"] = out["span_on_over_off"] <= 1.05
    return out


def report_tracing(t: dict) -> str:
    return "\n".join([
        f"  tracing    span on {t['on_span_s']:.2f} s, off {t['off_span_s']:.2f} s (median of {t['repeats']}): "
        f"on/off {t['span_on_over_off']:.3f} (target <= 1.05: {'met' if t['target_met'] else 'NOT met'})",
        f"             command wall on {t['on_command_wall_s']:.2f} s, off {t['off_command_wall_s']:.2f} s "
        "(on includes writing the traces after the last response)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--mix", choices=("fixed", "realistic"), default="fixed")
    parser.add_argument("--mode", choices=("sync", "batch"), default="sync")
    parser.add_argument("--batch-delay-s", type=float, default=0.5,
                        help="(--mode batch) how long each fixture batch runs")
    parser.add_argument("--poll-s", type=float, default=0.2, help="(--mode batch) batch_poll_s")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--tracing-repeats", type=int, default=3,
                        help="fresh runs each with traces=true and traces=false (0: skip)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.latency_s, args.mix)
        return 0
    if args.mode == "batch":
        result = run_batch(args.questions, args.mix, args.batch_delay_s, args.poll_s)
        print(report_batch(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        assert all(result["checks"].values()), result["checks"]
        return 0
    result = run(args.questions, args.concurrency, args.latency_s, args.mix)
    print(report(result))
    if args.tracing_repeats > 0:
        result["tracing"] = tracing_overhead(args.questions, args.concurrency, args.latency_s,
                                             args.tracing_repeats)
        print(report_tracing(result["tracing"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    assert result["cached_server_calls"] == 0, result
    return 0


if __name__ == "__main__":
    sys.exit(main())
