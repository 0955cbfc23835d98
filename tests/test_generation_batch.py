"""`python -m fgrft.generate` with generator.mode/verifier.mode=batch against the batch fixture
on 127.0.0.1: step-synchronous rounds, kill -9 while polling and between create and its record
(re-attach, zero rows re-submitted), expiry (only the missing rows again), both modes on one cache."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.step_responder import StepResponder, write_questions
from tests.support.batch_server import BatchScript, BatchServer

from tests.test_generation_job import command, env, generate, local, read, run_dir

QUESTIONS = 40
STEPS = 6


@pytest.fixture
def batch_server():
    with BatchServer(responder=StepResponder(), models=("served",)) as server:
        yield server


def batch_args(tmp_path: Path, url: str, generator: str = "batch", verifier: str = "batch") -> list[str]:
    source = tmp_path / "questions.json"
    if not source.exists():
        write_questions(source, QUESTIONS)
    return local(url) + [f"source.path={source}", "benchmark=sample",
                         f"generator.mode={generator}", f"verifier.mode={verifier}",
                         "generator.batch_poll_s=0.05", "verifier.batch_poll_s=0.05"]


def summary_of(cwd: Path) -> dict:
    return json.loads((run_dir(cwd) / "summary.json").read_text())


def wait_for(condition, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition(), "the run ended before the moment to kill it"


def test_rounds_kill_9_while_polling_expiry_and_a_rerun_that_submits_nothing(tmp_path, batch_server):
    # Round 1 expires with 10 of its 40 rows done; round 2 is still running when the run is killed.
    batch_server.script(BatchScript(delay_s=0.1, expire_after=10), BatchScript(delay_s=0.1))
    batch_server.default = BatchScript(delay_s=60)
    args = batch_args(tmp_path, batch_server.base_url)
    proc = subprocess.Popen(command(*args), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # batches: round 1, its 30 missing rows, round 2 (all P2s)
        wait_for(lambda: batch_server.creates == 3 and batch_server.polls >= 6, proc)
    finally:
        proc.kill()
    proc.wait(30)
    assert proc.returncode == -9
    first, resubmitted, p2 = batch_server.batches.values()
    assert len(first.lines) == QUESTIONS and first.status == "expired"
    assert {line["custom_id"] for line in resubmitted.lines} == \
        {line["custom_id"] for line in first.lines[10:]}
    assert len(p2.lines) == QUESTIONS

    batch_server.default = BatchScript(delay_s=0.05)
    for b in batch_server.batches.values():
        b.script = BatchScript(delay_s=0.05)   # the provider finishes round 2 meanwhile
    r = generate(tmp_path, *args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert summary["kept"] == QUESTIONS and summary["dropped"] == {}
    # Every row went out once, but the 30 that never ran in the expired batch: twice.
    assert Counter(batch_server.rows.values()) == {1: QUESTIONS * STEPS - 30, 2: 30}
    assert batch_server.total == 0   # no synchronous call at all
    b = summary["batches"]
    assert b["reattached"] == 1 and b["rows_submitted"] == QUESTIONS * (STEPS - 2)
    assert b["rounds"] == STEPS - 1 and b["rows_resubmitted"] == 0
    # Paid here: the re-attached round's rows and the four rounds after it.
    assert summary["mode"]["batch"]["calls"] == QUESTIONS * (STEPS - 1)
    # The same kinds of records as sync mode.
    records = read(run_dir(tmp_path) / "records.jsonl")
    assert len(records) == QUESTIONS and set(records[0]) >= {"id", "Question", "Complex_CoT", "Response"}
    traces = read(run_dir(tmp_path) / "traces.jsonl")
    assert sum(t["cached"] for t in traces) == QUESTIONS   # the P1 rows answered before the kill

    creates = batch_server.creates
    r = generate(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert batch_server.creates == creates and summary_of(tmp_path)["cache_hits"] == QUESTIONS * STEPS


def test_kill_between_create_and_its_record_then_both_modes_on_one_cache(tmp_path, batch_server):
    batch_server.default = BatchScript(delay_s=0.05)
    args = batch_args(tmp_path, batch_server.base_url, generator="batch", verifier="sync")
    proc = subprocess.Popen(command(*args), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def kill_on_second_create(batch: dict) -> None:
        if batch_server.creates == 2:   # the P3 round: created, but the client never hears so
            os.kill(proc.pid, signal.SIGKILL)
    batch_server.on_create = kill_on_second_create
    try:
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == -9 and batch_server.creates == 2
    assert batch_server.total == QUESTIONS  # the verifier's P2s, synchronously
    batch_server.on_create = None

    r = generate(tmp_path, *args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert summary["kept"] == QUESTIONS
    assert summary["batches"]["reattached"] == 1
    # Generator steps as batch rows, each once; verifier steps as sync calls, each once.
    assert Counter(batch_server.rows.values()) == {1: QUESTIONS * 4}
    assert batch_server.total == QUESTIONS * 2
    assert summary["mode"]["sync"]["calls"] == QUESTIONS   # the gates (P2s were cached)

    # The other way round on the same cache: every call is answered already.
    creates, total = batch_server.creates, batch_server.total
    r = generate(tmp_path, *batch_args(tmp_path, batch_server.base_url, generator="sync",
                                       verifier="batch"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (batch_server.creates, batch_server.total) == (creates, total)


def test_the_embedded_batch_runner_starts_with_the_servers_engine_settings(tmp_path):
    from fgrft.generation.local_batch import runner_command
    from fgrft.models.server import server_command

    runner = runner_command(tmp_path, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    server = server_command(tmp_path, 8123)
    assert runner[1:3] == ["-m", "vllm.entrypoints.openai.run_batch"]
    assert runner[runner.index("-i") + 1].endswith("in.jsonl")
    # Everything the server is started with, but where it listens and how it logs.
    own = {"--host", "127.0.0.1", "--port", "8123", "--uvicorn-log-level", "warning",
           "--disable-uvicorn-access-log", "vllm.entrypoints.openai.api_server"}
    assert [a for a in server[1:] if a not in own] == \
        [a for a in runner[1:] if a not in ("-i", "-o", runner[runner.index("-i") + 1],
                                            runner[runner.index("-o") + 1],
                                            "vllm.entrypoints.openai.run_batch")]


@pytest.mark.slow
def test_embedded_batch_mode_end_to_end_on_the_smol_model(tmp_path, smol_path):
    models = tmp_path / ".cache" / "fgrft" / "models"
    models.mkdir(parents=True)
    (models / "smol").symlink_to(smol_path, target_is_directory=True)
    # Short caps keep this short (P1 cannot fit 64 tokens: one round, then parse failures).
    args = ["source.limit=2", "generator.max_output_tokens=64", "verifier.max_output_tokens=64",
            "generator.mode=batch", "verifier.mode=batch", "generator.batch_poll_s=2",
            "verifier.batch_poll_s=2"]
    r = generate(tmp_path, *args, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = summary_of(tmp_path)
    assert summary["questions"] == 2 and summary["kept"] + sum(summary["dropped"].values()) == 2
    assert summary["batches"]["rounds"] >= 1 and summary["mode"]["batch"]["calls"] >= 2
    assert summary["tokens"]["smol"]["completion"] > 0 and summary["cost_usd"] == 0
    assert "embedded server ready" not in r.stdout   # no server: vllm run_batch only
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(smol_path) not in ps and str(models) not in ps
    # The same command again answers from the cache: no batch at all.
    r = generate(tmp_path, *args, timeout=900)
    assert r.returncode == 0 and summary_of(tmp_path)["batches"]["batches"] == 0
