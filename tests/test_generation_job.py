"""`python -m fgrft.generate` end to end against a real OpenAI-compatible server on 127.0.0.1:
injected faults, the contamination guard, kill -9 and resume, budget_usd, the offline dry run."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.step_responder import StepResponder
from fgrft.data import bundled_path
from tests.support.fault_server import bad_body, drop, rate_limit, server_error, truncated

from tests.fixtures_llm import TEST_KEY_ENV


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fgrft.generate", *args]


def env() -> dict[str, str]:
    # Each test names its benchmark files itself: a CI that exports the real ones must not
    # change what these runs check against.
    out = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FGRFT_BENCHMARK_DIR")}
    out["HF_HUB_OFFLINE"] = out["HF_DATASETS_OFFLINE"] = "1"
    return out


def generate(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def local(url: str, model: str = "served", concurrency: int = 8) -> list[str]:
    return ["generator=vllm_local", "verifier=vllm_local", f"generator.base_url={url}",
            f"verifier.base_url={url}", f"generator.model={model}", f"verifier.model={model}",
            f"generator.concurrency={concurrency}", f"verifier.concurrency={concurrency}"]


def run_dir(cwd: Path) -> Path:
    (path,) = {p.parent for p in (cwd / "outputs").rglob("summary.json")}
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sample_rows() -> list[dict]:
    return next(iter(json.loads(bundled_path("source_sample.json").read_text()).values()))


def test_faults_contamination_duplicates_revision_and_mlflow(tmp_path, fault_server):
    rows = sample_rows()[:3]
    benchmark = json.loads(bundled_path("benchmark_sample.json").read_text())
    leaked = next(iter(benchmark.values()))[0]            # an evaluation item
    source = tmp_path / "questions.json"
    source.write_text(json.dumps({"mine": rows + [rows[0], leaked]}))
    gout_gold = ': Indomethacin"'  # the compressed feedback's gold, which every gate sees

    def gate(request, answer):  # one question's chain goes back once
        if gout_gold in request.last_content:
            return {"verdict": "Revise", "revise_note": "Name the crystal type."}
        return answer
    fault_server.responder = StepResponder({"gate": gate})
    fault_server.push(rate_limit(0.05), server_error(), drop(), truncated({"a": 1}), bad_body())

    r = generate(tmp_path, *local(fault_server.base_url), f"source.path={source}", "benchmark=sample")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    d = run_dir(tmp_path)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["questions"] == 4 and summary["duplicates_dropped"] == 1
    assert summary["kept"] == 3 and summary["dropped"] == {"contaminated": 1}
    assert summary["revised"] == 1 and summary["revision_rate"] == round(1 / 3, 4)
    assert summary["verdicts"]["gate"] == {"Pass": 2, "Revise": 1}
    # Dropped and listed before any call: its text never reached the server.
    (overlap,) = summary["contamination"]["overlaps"]
    assert overlap["kind"] == "exact"
    assert {s["source"] for s in summary["contamination"]["checked_against"]} >= {"MedQA_sample"}
    assert not any(leaked["question"][:80] in req.last_content for req in fault_server.requests)
    # Every request is accounted for: 3 questions x 6 steps + 1 revision, plus two re-asked
    # bad answers (truncated, bad body) and three transport retries (429, 500, dropped socket).
    assert fault_server.total == 19 + 2 + 3
    assert summary["calls"] == 19 + 2 and summary["cache_hits"] == 0
    traces = read(d / "traces.jsonl")
    assert len(traces) == summary["calls"]
    assert sorted(t["outcome"] for t in traces if t["outcome"] != "ok") == ["malformed", "malformed"]
    assert set(traces[0]) >= {"id", "step", "attempt", "cache_key", "cached", "model", "tokens",
                              "latency_s", "outcome"}
    assert {t["step"] for t in traces} == {"p1", "p2", "p3", "gate", "p3_rev1", "p4", "p5"}
    records = read(d / "records.jsonl")
    assert len(records) == 3 and {r["id"] for r in records} == {o["id"] for o in read(d / "questions.jsonl") if o["kept"]}
    assert all(set(r) >= {"id", "source", "Question", "Complex_CoT", "Response", "gold", "meta"} for r in records)
    outcomes = read(d / "questions.jsonl")
    assert [o["reason"] for o in outcomes].count("contaminated") == 1
    assert "finished: 3/3 done | kept 3 | dropped 0 | revised 1" in r.stdout  # no TTY: log lines

    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run((d / "mlflow_run_id").read_text().strip())
    assert run.data.metrics["kept"] == 3 and run.data.metrics["dropped/contaminated"] == 1
    assert run.data.metrics["cost_usd"] == 0 and run.data.metrics["calls"] == summary["calls"]
    assert len(run.data.params["prompt_hash"]) == 16 and run.data.tags["stage"] == "generate"
    assert run.info.run_name == "generate thesis served/served"

    # In the MLflow UI: the source questions and the kept records as inputs, ...
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"source", "records"}
    assert inputs["source"].digest == run.data.params["items_hash"]
    assert json.loads(inputs["source"].profile)["num_rows"] == 3  # the repeat and the leaked item are out
    assert json.loads(inputs["records"].profile)["num_rows"] == 3
    # ... a table row per question with its calls and cost, ...
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "questions_table.json", str(tmp_path)))
                       .read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted(r["id"] for r in rows) == sorted(o["id"] for o in outcomes)
    assert sum(r["calls"] for r in rows) == summary["calls"] and sum(r["revised"] for r in rows) == 1
    # ... and one trace per question, a span per step call with its input, output, model and tokens.
    found = client.search_traces(experiment_ids=[run.info.experiment_id], run_id=run.info.run_id)
    assert sorted(t.info.tags["question_id"] for t in found) == sorted(o["id"] for o in outcomes)
    by_id = {t.info.tags["question_id"]: t for t in found}
    (revised,) = [o for o in outcomes if o["revised"]]
    spans = by_id[revised["id"]].data.spans
    assert [sp.name for sp in spans[1:]] == ["p1", "p2", "p3", "gate", "p3_rev1", "p4", "p5"]
    assert spans[0].outputs["kept"] is True and spans[0].inputs["gold"]
    assert all(sp.parent_id == spans[0].span_id for sp in spans[1:])
    gate = spans[4]
    assert gate.outputs["verdict"] == "Revise" and gate.inputs["messages"][-1]["role"] == "user"
    assert gate.attributes["model"] == "served" and gate.attributes["tokens"]["completion"] > 0
    assert all(spans[0].start_time_ns <= sp.start_time_ns <= sp.end_time_ns <= spans[0].end_time_ns
               for sp in spans[1:])
    (dropped,) = [o for o in outcomes if o["reason"] == "contaminated"]
    assert len(by_id[dropped["id"]].data.spans) == 1 and by_id[dropped["id"]].info.tags["outcome"] == "contaminated"


def test_kill_9_mid_run_then_rerun_pays_only_for_unfinished_calls(tmp_path, fault_server):
    fault_server.latency_s = 0.25
    fault_server.responder = StepResponder()
    args = local(fault_server.base_url, concurrency=2) + ["source.limit=4"]
    full = 4 * 6
    proc = subprocess.Popen(command(*args), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while fault_server.total < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait(30)
    assert proc.returncode == -9
    with sqlite3.connect(tmp_path / ".cache" / "fgrft" / "llm" / "responses.sqlite") as db:
        answered = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert 0 < answered < full
    fault_server.reset()

    r = generate(tmp_path, *args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["kept"] == 4
    # Everything answered before the kill is replayed free; only the rest is sent (again).
    assert fault_server.total == full - answered
    assert summary["cache_hits"] == answered and summary["calls"] == full - answered
    assert sum(t["cached"] for t in read(run_dir(tmp_path) / "traces.jsonl")) == answered

    # One MLflow trace per question, however the work was split between the killed run and the
    # re-run; a third run of the same command adds none.
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run((run_dir(tmp_path) / "mlflow_run_id").read_text().strip())

    def traced() -> list[str]:
        found = client.search_traces(experiment_ids=[run.info.experiment_id], run_id=run.info.run_id)
        return sorted(t.info.tags["question_id"] for t in found)
    ids = sorted(o["id"] for o in read(run_dir(tmp_path) / "questions.jsonl"))
    assert traced() == ids
    assert generate(tmp_path, *args).returncode == 0
    assert traced() == ids


def test_budget_stops_cleanly_and_keeps_finished_records(tmp_path, fault_server, api_key):
    fault_server.responder = StepResponder()
    priced = ["generator=gpt4o", "verifier=gpt4o", "source.limit=3"]
    for role in ("generator", "verifier"):
        priced += [f"{role}.base_url={fault_server.base_url}", f"{role}.api_key_env={TEST_KEY_ENV}",
                   f"{role}.concurrency=1", f"{role}.rpm=null", f"{role}.tpm=null"]

    # A zero budget sends nothing, keeps nothing, and still writes all three files.
    (tmp_path / "zero").mkdir()
    r = generate(tmp_path / "zero", *priced, "budget_usd=0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert fault_server.total == 0
    d = run_dir(tmp_path / "zero")
    summary = json.loads((d / "summary.json").read_text())
    assert summary["kept"] == 0 and summary["dropped"] == {"budget": 3} and summary["stopped"] == "budget"
    assert (d / "records.jsonl").read_text() == "" and (d / "traces.jsonl").read_text() == ""

    # About $0.025 per question here: two finish, the third runs out.
    r = generate(tmp_path, *priced, "budget_usd=0.06")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["stopped"] == "budget" and summary["dropped"].get("budget", 0) >= 1
    assert summary["kept"] >= 1 and summary["kept"] + sum(summary["dropped"].values()) == 3
    assert 0.06 <= summary["cost_usd"] < 0.06 + 0.02  # overshoot: at most the call in flight
    assert summary["calls"] == fault_server.total
    assert len(read(run_dir(tmp_path) / "records.jsonl")) == summary["kept"]
    assert "budget_usd=0.06 spent" in r.stdout


def thesis_benchmark_dir(path: Path) -> Path:
    """The two thesis benchmark files, filled with the bundled benchmark sample's items."""
    sample = json.loads(bundled_path("benchmark_sample.json").read_text())
    items = [item for rows in sample.values() for item in rows]
    path.mkdir()
    (path / "eval_data_clinical.json").write_text(json.dumps(
        {"MedQA_USLME_test": items[:3], "PubMedQA_test": items[3:6]}))
    (path / "eval_data_medmcqa.json").write_text(json.dumps({"MedMCQA_validation": items[6:9]}))
    return path


def test_a_real_source_refuses_to_start_without_the_benchmarks(tmp_path):
    r = generate(tmp_path, "+experiment=fgrft_data", "dry_run=true")
    assert r.returncode != 0
    assert "Stage 1 refuses to start" in r.stderr and "benchmark.dir" in r.stderr
    assert "contamination.mode=skip" in r.stderr
    assert not list((tmp_path / "outputs").rglob("dry_run.json"))
    # One line, refused before the MLflow store is opened: no traceback, no run.
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_of_the_preset_estimates_offline_from_the_bundled_sample(tmp_path):
    benchmarks = thesis_benchmark_dir(tmp_path / "benchmarks")
    r = generate(tmp_path, "+experiment=fgrft_data", "dry_run=true", f"benchmark.dir={benchmarks}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dry run: 5,000 questions, nothing called" in r.stdout
    assert "estimated from the bundled sample" in r.stdout and "source.n=5,000" in r.stdout
    (plan,) = list((tmp_path / "outputs").rglob("dry_run.json"))
    estimate = json.loads(plan.read_text())
    assert set(estimate["per_model"]) == {"gpt-4o", "gpt-5"}
    assert estimate["per_step"]["p1"]["calls"] == 5000 and estimate["per_model"]["gpt-5"]["calls"] == 10000
    assert estimate["total"]["cost_usd"] > 0 and estimate["estimated_from"] == "bundled sample"
    # Sync and batch side by side: the Batch API is half of every rate of both models.
    assert "sync vs batch" in r.stdout and "7 rounds; worst case 7 x 24 h = 168 h" in r.stdout
    assert estimate["batch"]["total"]["cost_usd"] == pytest.approx(estimate["total"]["cost_usd"] / 2)
    assert estimate["batch"]["worst_case_wall_h"] == 168
    assert not list((tmp_path / "outputs").rglob("records.jsonl"))
    assert not (tmp_path / ".cache" / "fgrft" / "models").exists()  # nothing built or started
