"""Benchmark: the Stage 1 pipeline end to end against the fault server.

    python -m fgrft.bench.pipeline [--questions 500] [--concurrency 64] [--latency-s 0.2] [--json FILE]

Runs the real command (``python -m fgrft.generate generator=vllm_local verifier=vllm_local``)
on ``--questions`` questions (the bundled sample repeated, each copy a distinct question)
against a fault server in its own process that answers every call after a fixed latency,
without faults, with schema-valid JSON for each step (:class:`StepResponder`: the gate
passes, the decision and final response name the gold letter, so every question is kept).

The span is measured by the server: first request received to last response sent. The
latency-bound ideal is ``max(calls * latency / concurrency, longest chain * latency)``, where
the longest chain is the most calls one question made in sequence. Target: span within 1.3x
the ideal. A second run of the same command must send nothing (all cache hits). Then
``--tracing-repeats`` fresh runs each with ``traces=false`` and ``traces=true`` (interleaved)
compare the median spans: with tracing on, the span must stay within 5% of off.

:class:`StepResponder` is also what the pipeline tests answer with.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from fgrft.testing.fault_server import Action, Request, ServerProcess, reply, reply_json

MODEL = "bench-model"
_GOLD = re.compile(r'"gold": "([A-N]): ')
_CORRECT = re.compile(r"Correct answer: ([A-N]): ")
_CONCLUSION = re.compile(r"Conclusion reached: .*?answer is ([A-N])\b")
_WORDS = ("The findings fit the mechanism described and the key laboratory result supports it "
          "while the alternatives leave the central finding unexplained. ")


# ----------------------------------------------------------------------------- responder


def step_of(request: Request) -> str | None:
    """The pipeline step a request is for, from its schema's name (``fgrft_<step>``)."""
    fmt = (request.body or {}).get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name") or ""
    return name[len("fgrft_"):] if name.startswith("fgrft_") else None


def schema_of(request: Request) -> dict:
    return (request.body or {})["response_format"]["json_schema"]["schema"]


def instance(schema: dict, text: str = _WORDS) -> Any:
    """A valid instance of ``schema`` (the subset the pipeline uses): first enum values,
    minimum numbers, at least one array item, strings cut to their maxLength."""
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if t == "object":
        return {k: instance(v, text) for k, v in schema["properties"].items()}
    if t == "array":
        n = min(max(schema.get("minItems", 0), 1), schema.get("maxItems", 1))
        return [instance(schema["items"], text) for _ in range(n)]
    if t == "string":
        limit = schema.get("maxLength", 200)
        return (text * (1 + limit // len(text)))[:min(limit, 120)].strip() or "x"
    if t in ("number", "integer"):
        return schema.get("minimum", 0)
    raise ValueError(f"no instance for schema {schema}")


def gold_letter(request: Request) -> str | None:
    for pattern in (_GOLD, _CORRECT, _CONCLUSION):
        m = pattern.search(request.last_content)
        if m:
            return m.group(1)
    return None


class StepResponder:
    """Answers each step with schema-valid JSON; the chain agrees with the gold answer.

    ``overrides`` maps a step to a function ``(request, answer) -> Action | dict`` that may
    replace the answer (a gate that says Revise, a final answer that disagrees, a fault).
    """

    def __init__(self, overrides: dict[str, Callable[[Request, dict], Any]] | None = None):
        self.overrides = dict(overrides or {})
        self.steps: Counter[str] = Counter()

    def __call__(self, request: Request) -> Action:
        step = step_of(request)
        if step is None:
            return reply("not a pipeline request")
        self.steps[step] += 1
        answer = instance(schema_of(request))
        gold = gold_letter(request)
        if step == "p3":
            answer["reasoning_chain"]["decision"] = f"The answer is {gold}."
        elif step == "p5":
            answer["response"] = f"The answer is {gold}. " + answer["response"]
        elif step == "gate":
            answer["revise_note"] = ""
        override = self.overrides.get(step)
        if override is not None:
            answer = override(request, answer)
            if isinstance(answer, Action):
                return answer
        return reply_json(answer)


# ----------------------------------------------------------------------------- the run


def write_questions(path: Path, n: int) -> list[str]:
    """``n`` distinct questions: the bundled sample repeated, each copy's stem marked."""
    from fgrft.data import bundled_path

    rows = next(iter(json.loads(bundled_path("source_sample.json").read_text()).values()))
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        row["question"] = f"{row['question']} (Case {i + 1}.)"
        out.append(row)
    path.write_text(json.dumps({"bench_questions": out}))
    return [r["question"] for r in out]


def generate_command(base_url: str, source: Path, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "fgrft.generate", "generator=vllm_local", "verifier=vllm_local",
            f"generator.base_url={base_url}", f"verifier.base_url={base_url}",
            f"generator.model={MODEL}", f"verifier.model={MODEL}",
            f"generator.concurrency={concurrency}", f"verifier.concurrency={concurrency}",
            f"source.path={source}", "benchmark=sample"]


def serve(latency_s: float) -> None:
    from fgrft.bench.engine_throughput import SpanServer

    SpanServer(latency_s=latency_s, responder=StepResponder(), models=(MODEL,)).serve_forever()


def run(questions: int, concurrency: int, latency_s: float) -> dict:
    out: dict[str, Any] = {"questions": questions, "concurrency": concurrency,
                           "latency_s": latency_s, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="fgrft-bench-pipeline-") as tmp, \
            ServerProcess(["-m", "fgrft.bench.pipeline", "--serve", "--latency-s", str(latency_s)]) as server:
        root = Path(tmp)
        source = root / "questions.json"
        write_questions(source, questions)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.setdefault("HF_HUB_OFFLINE", "1")
        command = generate_command(server.base_url, source, concurrency)
        started = time.perf_counter()
        r = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        out["command_wall_s"] = time.perf_counter() - started
        if r.returncode != 0:
            raise RuntimeError(f"generate failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        stats = server.stats()
        (summary_path,) = list((root / "outputs").rglob("summary.json"))
        summary = json.loads(summary_path.read_text())
        traces = [json.loads(line) for line in (summary_path.parent / "traces.jsonl").open()]
        chains = Counter(t["id"] for t in traces if not t["cached"])
        out.update(calls=stats["total"], span_s=stats["span_s"], peak_in_flight=stats["peak_in_flight"],
                   kept=summary["kept"], dropped=summary["dropped"], longest_chain=max(chains.values()),
                   generate_wall_s=summary["wall_s"])

        started = time.perf_counter()
        r = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"cached re-run failed:\n{r.stderr[-3000:]}")
        again = json.loads(summary_path.read_text())
        out.update(cached_rerun_wall_s=time.perf_counter() - started,
                   cached_server_calls=server.stats()["total"] - stats["total"],
                   cached_hits=again["cache_hits"], cached_kept=again["kept"])

    out["ideal_s"] = max(out["calls"] * latency_s / concurrency, out["longest_chain"] * latency_s)
    out["span_over_ideal"] = out["span_s"] / out["ideal_s"]
    out["target_met"] = out["span_over_ideal"] <= 1.3
    return out


def traced_span(questions: int, concurrency: int, latency_s: float, traces: bool) -> dict:
    """One fresh run (empty cache, new store) with ``traces=true|false``: server span, command wall."""
    with tempfile.TemporaryDirectory(prefix="fgrft-bench-traces-") as tmp, \
            ServerProcess(["-m", "fgrft.bench.pipeline", "--serve", "--latency-s", str(latency_s)]) as server:
        root = Path(tmp)
        source = root / "questions.json"
        write_questions(source, questions)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.setdefault("HF_HUB_OFFLINE", "1")
        command = [*generate_command(server.base_url, source, concurrency), f"traces={str(traces).lower()}"]
        started = time.perf_counter()
        r = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - started
        if r.returncode != 0:
            raise RuntimeError(f"generate traces={traces} failed:\n{r.stderr[-3000:]}")
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


def report(r: dict) -> str:
    return "\n".join([
        f"pipeline: {r['questions']} questions, concurrency {r['concurrency']}, server latency "
        f"{r['latency_s'] * 1000:.0f} ms, {r['cpus']} CPUs",
        f"  calls {r['calls']:,} (kept {r['kept']}, dropped {r['dropped'] or 'none'}), "
        f"longest chain {r['longest_chain']} calls, server peak {r['peak_in_flight']} in flight",
        f"  ideal      {r['ideal_s']:7.2f} s = max(calls x latency / concurrency, longest chain x latency)",
        f"  span       {r['span_s']:7.2f} s server side ({r['generate_wall_s']:.2f} s job wall, "
        f"{r['command_wall_s']:.2f} s command wall)",
        f"  ratio      {r['span_over_ideal']:.3f} (target <= 1.3: {'met' if r['target_met'] else 'NOT met'})",
        f"  re-run     {r['cached_rerun_wall_s']:.2f} s command wall, {r['cached_server_calls']} "
        f"server calls, {r['cached_hits']:,} cache hits, kept {r['cached_kept']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--tracing-repeats", type=int, default=3,
                        help="fresh runs each with traces=true and traces=false (0: skip)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.latency_s)
        return 0
    result = run(args.questions, args.concurrency, args.latency_s)
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
