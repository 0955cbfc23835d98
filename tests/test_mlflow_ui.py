"""The MLflow UI as a user opens it: `mlflow ui` on a store holding a replayed evaluation and a
Stage 1 run, pages rendered by headless Chromium (Debian's `chromium` package, no driver).

The UI is a JavaScript app, so the assertions read the DOM Chromium dumps after running the
page's scripts (`--virtual-time-budget` lets them finish). Screenshots are saved under the test's
temporary directory. Without Chromium the test skips, except under CI (CI=true), where it fails.
"""
from __future__ import annotations

import html
import json
import os
import signal
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.support.step_responder import StepResponder

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parent.parent
REPLAY = REPO / "tests" / "data" / "replay_sample.json"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (CI installs Debian's chromium package: see .ci/run)")
    pytest.skip("chromium is not installed (Debian: apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return out


def fgrft(cwd: Path, stage: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"fgrft.{stage}", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen, timeout: int = 300) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]


def render(browser: str, url: str, profile: Path, screenshot: Path) -> str:
    """The page's text after its scripts ran, and a screenshot of it."""
    r = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000",
         f"--screenshot={screenshot}", "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    body = re.sub(r"<script.*?</script>|<style.*?</style>", " ", r.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def test_runs_table_run_page_and_traces_in_chromium(tmp_path, fault_server):
    browser = chromium()
    store = tmp_path / "mlflow.db"
    # The store exists before the server and the two runs start, all three at once.
    mlflow.MlflowClient(f"sqlite:///{store}").search_experiments(max_results=1)
    evaluate = fgrft(tmp_path, "evaluate", "inference=replay", f"inference.path={REPLAY}")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
         "--default-artifact-root", str(tmp_path / "mlruns"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: the server's workers stop with it
    try:
        fault_server.responder = StepResponder()
        url = fault_server.base_url
        finished(fgrft(tmp_path, "generate", "generator=vllm_local", "verifier=vllm_local",
                       f"generator.base_url={url}", f"verifier.base_url={url}", "generator.model=served",
                       "verifier.model=served", "source.limit=2", "benchmark=sample"))
        finished(evaluate)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
            time.sleep(0.5)

        client = mlflow.MlflowClient(f"sqlite:///{store}")
        experiment = client.get_experiment_by_name("default").experiment_id
        (evaluation,) = client.search_runs([experiment], filter_string="tags.stage = 'evaluate'")
        name = "evaluate smol t0.5 strict replay:replay_sample"
        accuracy = evaluation.data.metrics["accuracy/overall"]
        profile = tmp_path / "chromium-profile"

        runs = render(browser, f"{base}/#/experiments/{experiment}/runs", profile, tmp_path / "runs.png")
        assert name in runs and "generate thesis served/served" in runs
        assert "replay:replay_sample.json" in runs  # the Dataset column

        page = render(browser, f"{base}/#/experiments/{experiment}/runs/{evaluation.info.run_id}", profile,
                      tmp_path / "run.png")
        assert name in page
        assert "accuracy/overall" in page and f"{accuracy:.4g}"[:5] in page
        assert "replay:replay_sample.json" in page
        assert "python -m fgrft.evaluate inference=replay" in page  # the description

        # The generate run's Traces tab with one question's trace open: its span tree in step order.
        (generation,) = client.search_runs([experiment], filter_string="tags.stage = 'generate'")
        (questions,) = (tmp_path / "outputs").rglob("questions.jsonl")
        ids = [json.loads(line)["id"] for line in questions.read_text().splitlines()]
        found = client.search_traces(experiment_ids=[experiment], run_id=generation.info.run_id)
        assert sorted(t.info.tags["question_id"] for t in found) == sorted(ids)
        trace = found[0]
        qid = trace.info.tags["question_id"]
        traces = render(browser, f"{base}/#/experiments/{experiment}/runs/{generation.info.run_id}/traces"
                                 f"?selectedEvaluationId={trace.info.trace_id}", profile, tmp_path / "traces.png")
        took = r"[\d.]+ ?m?s"
        steps = " ".join(f"{step} {took}" for step in ("p1", "p2", "p3", "gate", "p4", "p5"))
        assert re.search(f"Spans question {qid} {took} {steps}", traces), traces[:3000]
        assert all(i in traces for i in ids)  # both questions' traces are listed behind it
        for png in ("runs.png", "run.png", "traces.png"):
            assert (tmp_path / png).stat().st_size > 10_000, png
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
