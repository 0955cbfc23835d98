"""`python -m fgrft.evaluate inference=openai` against a real OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.fault_server import reply


def evaluate(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "fgrft.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_openai_backend_scores_cached_and_resumes_without_paying_twice(tmp_path, fault_server):
    fault_server.responder = lambda request: reply("After weighing the options, the answer is A.")
    args = ["inference=openai", f"inference.base_url={fault_server.base_url}", "inference.model=served-model",
            "benchmark.limit=2", "temperature.max_new_tokens=32"]
    r = evaluate(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert fault_server.total == 6  # 2 items x 3 sources, one call each
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["overall"]["total"] == 6 and metrics["overall"]["unparsed"] == 0
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(p["extracted"] == "A" for p in preds)
    assert metrics["overall"]["correct"] == sum(p["answer_idx"] == "A" for p in preds)
    # model is only a label here: nothing was built
    assert not (tmp_path / ".cache" / "fgrft" / "models").exists()
    # a lost completion file is replayed from the response cache: zero new calls
    (run_dir / "completions.partial.jsonl").unlink()
    r = evaluate(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert fault_server.total == 6


def test_openai_dry_run_prices_and_calls_nothing(tmp_path, fault_server):
    r = evaluate(tmp_path, "inference=openai", f"inference.base_url={fault_server.base_url}",
                 "inference.model=gpt-4o", "inference.kind=openai", "dry_run=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert fault_server.total == 0
    (plan,) = list((tmp_path / "outputs").rglob("dry_run.json"))
    estimate = json.loads(plan.read_text())
    assert estimate and "gpt-4o" in json.dumps(estimate)
    assert not list((tmp_path / "outputs").rglob("predictions.jsonl"))
