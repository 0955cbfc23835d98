"""Stage 3 end to end through the real entrypoint: replay, hf, vllm, bad input, resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fgrft.prompts import load_template, render
from fgrft.evaluation.backends.replay import load_replay
from fgrft.records import Prediction, Question, read_jsonl
from fgrft.scoring import score_predictions

REPO = Path(__file__).resolve().parent.parent
REPLAY_SAMPLE = REPO / "tests" / "data" / "replay_sample.json"
PREDICTION_FIELDS = {"id", "source", "sample", "question", "options", "answer_idx", "prompt", "output",
                     "finish_reason", "extracted", "correct", "schema_version"}
SOURCE_KEYS = {"accuracy", "correct", "total", "unparsed", "ci_low", "ci_high"}
BOTH_SCORERS = {"strict_extracted", "strict_correct", "thesis_head", "thesis_tail", "thesis_correct"}


def evaluate(cwd: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fgrft.evaluate", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def only_run_dir(root: Path) -> Path:
    (d,) = [p.parent for p in (root / "outputs").rglob("mlflow_run_id")]
    return d


def the_run(root: Path):
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    return client, run


def _render(q, o):
    return render(load_template("eval_thesis.txt"), Question("", q, o, next(iter(o)), ""))


@pytest.mark.parametrize("scorer", ["strict", "thesis"])
def test_replay_writes_the_three_files_and_a_run(tmp_path, scorer):
    r = evaluate(tmp_path, "inference=replay", f"inference.path={REPLAY_SAMPLE}", f"scorer={scorer}")
    assert r.returncode == 0, r.stderr[-3000:]
    d = only_run_dir(tmp_path)
    preds = [p for _, p in read_jsonl(d / "predictions.jsonl")]
    assert len(preds) == 36
    extra = {"head", "tail"} if scorer == "thesis" else set()
    assert all(set(p) == PREDICTION_FIELDS | BOTH_SCORERS | extra for p in preds)
    own = "strict_correct" if scorer == "strict" else "thesis_correct"
    assert [p["correct"] for p in preds] == [p[own] for p in preds]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["scorer"] == scorer and metrics["prompt"] == "thesis"
    assert set(metrics["per_source"]) == {"MedQA_sample", "PubMedQA_sample", "MedMCQA_sample"}
    for block in [*metrics["per_source"].values(), metrics["overall"]]:
        assert SOURCE_KEYS <= set(block)
        assert block["ci_low"] <= block["accuracy"] <= block["ci_high"]
    if scorer == "thesis":
        assert all({"head_correct", "tail_correct", "dropped_empty"} <= set(b) for b in metrics["per_source"].values())
        assert sum(b["dropped_empty"] for b in metrics["per_source"].values()) == 3  # the empty outputs
    else:
        assert metrics["overall"]["total"] == 36  # every item counts under strict, empty ones included
    # the entrypoint scores exactly what the library scores in process
    expected = score_predictions(load_replay(REPLAY_SAMPLE, _render), scorer, prompt="thesis").metrics
    assert metrics["per_source"] == expected["per_source"] and metrics["overall"] == expected["overall"]
    audit = [row for _, row in read_jsonl(d / "scorer_audit.jsonl")]
    assert audit and all(row["id"] for row in audit)
    client, run = the_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy/overall"] == pytest.approx(metrics["overall"]["accuracy"])
    for source, block in metrics["per_source"].items():
        assert run.data.metrics[f"accuracy/{source}"] == pytest.approx(block["accuracy"])
        assert run.data.metrics[f"unparsed/{source}"] == block["unparsed"]
    for key in ("scorer", "prompt_hash", "items_hash", "model_label", "temperature", "benchmark"):
        assert key in run.data.params
    # Both scorers, from the same outputs, whichever is configured.
    assert set(metrics["by_scorer"]) == {"strict", "thesis"}
    assert metrics["by_scorer"][scorer]["overall"] == metrics["overall"]
    for name in ("strict", "thesis"):
        for source, block in [*metrics["by_scorer"][name]["per_source"].items(),
                              ("overall", metrics["by_scorer"][name]["overall"])]:
            for key in ("accuracy", "ci_low", "ci_high", "unparsed"):
                assert run.data.metrics[f"{name}/{key}/{source}"] == pytest.approx(block[key])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions.jsonl", "metrics.json", "scorer_audit.jsonl", "config.yaml"} <= artifacts
    # What the MLflow UI shows: a readable name, the scored items as the eval dataset, a per-item table
    assert run.info.run_name == f"evaluate smol t0.5 {scorer} replay:replay_sample"
    (dataset_input,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "eval"
    assert dataset_input.dataset.name == "replay:replay_sample.json"
    assert dataset_input.dataset.digest == run.data.params["items_hash"]
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 36
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions_table.json", str(tmp_path)))
                        .read_text())
    table = {c: [row[i] for row in logged["data"]] for i, c in enumerate(logged["columns"])}
    assert list(table["id"]) == [p["id"] for p in preds]
    assert list(table["gold"]) == [p["answer_idx"] for p in preds]
    assert list(table["unparsed"]) == [p["extracted"] is None for p in preds]
    assert list(table["correct"]) == [p["correct"] for p in preds]


def test_strict_and_thesis_disagree_where_the_thesis_guesses():
    preds = load_replay(REPLAY_SAMPLE, _render)
    strict = score_predictions(preds, "strict").metrics["overall"]
    thesis = score_predictions(load_replay(REPLAY_SAMPLE, _render), "thesis").metrics["overall"]
    assert strict["unparsed"] > 0 and thesis["unparsed"] == 0
    assert thesis["accuracy"] > strict["accuracy"]  # the legacy rule finds an answer in everything


def test_replay_of_a_bad_file_names_file_record_and_field(tmp_path):
    rows = json.loads(REPLAY_SAMPLE.read_text())
    del rows[5]["answer_idx"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    r = evaluate(tmp_path, "inference=replay", f"inference.path={bad}")
    assert r.returncode != 0
    assert "bad.json" in r.stderr and "record 5" in r.stderr and "answer_idx" in r.stderr


def test_replay_reads_the_projects_own_predictions(tmp_path):
    first = evaluate(tmp_path, "inference=replay", f"inference.path={REPLAY_SAMPLE}", "scorer=thesis")
    assert first.returncode == 0, first.stderr[-2000:]
    own = only_run_dir(tmp_path) / "predictions.jsonl"
    again = tmp_path / "again"
    again.mkdir()
    r = evaluate(again, "inference=replay", f"inference.path={own}", "scorer=strict")
    assert r.returncode == 0, r.stderr[-2000:]
    preds = [Prediction.from_dict(p) for _, p in read_jsonl(only_run_dir(again) / "predictions.jsonl")]
    assert len(preds) == 36 and {p.source for p in preds} == {"MedQA_sample", "PubMedQA_sample", "MedMCQA_sample"}


def test_replay_of_a_run_directory_keeps_its_lineage(tmp_path):
    first = evaluate(tmp_path, "inference=replay", f"inference.path={REPLAY_SAMPLE}", "model.name=ft-label",
                     "model.path=/gone/checkpoint", "temperature=t0.7")
    assert first.returncode == 0, first.stderr[-2000:]
    source_dir = only_run_dir(tmp_path)
    # The lineage a fine-tuned checkpoint carries, kept beside the run's predictions.
    (source_dir / "fgrft.json").write_text(json.dumps({"base_model": "smol", "data_hash": "d4t4",
                                                       "train_run_id": "r123"}))
    again = tmp_path / "again"
    again.mkdir()
    r = evaluate(again, "inference=replay", f"inference.path={source_dir}", "scorer=thesis")
    assert r.returncode == 0, r.stderr[-2000:]
    _, run = the_run(again)
    params = run.data.params
    assert (params["model_label"], params["model.path"], params["temperature"]) == (
        "ft-label", "/gone/checkpoint", "0.7")
    assert (params["temperature.seed"], params["data_hash"], params["train_run_id"]) == ("42", "d4t4", "r123")
    assert json.loads((only_run_dir(again) / "fgrft.json").read_text())["data_hash"] == "d4t4"
    # What the command line sets explicitly wins.
    third = tmp_path / "third"
    third.mkdir()
    r = evaluate(third, "inference=replay", f"inference.path={source_dir / 'predictions.jsonl'}",
                 "temperature=t0.5", "model.name=relabelled")
    assert r.returncode == 0, r.stderr[-2000:]
    _, run = the_run(third)
    assert (run.data.params["model_label"], run.data.params["temperature"]) == ("relabelled", "0.5")
    assert run.data.params["model.path"] == "/gone/checkpoint" and run.data.params["data_hash"] == "d4t4"


# ------------------------------------------------------------------------ bad input, before any model
def _bad_benchmark(tmp_path: Path, mutate) -> Path:
    items = [{"question": "Which vitamin deficiency causes scurvy?", "options": {"A": "C", "B": "D"},
              "answer_idx": "A", "answer": "C"},
             {"question": "Which organ makes insulin?", "options": {"A": "Liver", "B": "Pancreas"},
              "answer_idx": "B", "answer": "Pancreas"}]
    mutate(items)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"MedQA_USLME_test": items}) if items else "")
    return path


@pytest.mark.parametrize("case,mutate,expect", [
    ("gold", lambda items: items[1].update(answer_idx="E"), ["bench.json", "record 1", "answer_idx"]),
    ("empty", lambda items: items.clear(), ["bench.json", "empty"]),
])
def test_bad_benchmark_fails_before_any_model_loads(tmp_path, case, mutate, expect):
    path = _bad_benchmark(tmp_path, mutate)
    # model.path points nowhere: the benchmark error must come first, and no model is built
    r = evaluate(tmp_path, "benchmark=medqa", f"benchmark.path={path}", "inference=hf")
    assert r.returncode != 0
    for text in expect:
        assert text in r.stderr, (text, r.stderr[-2000:])
    assert not (tmp_path / ".cache" / "fgrft" / "models").exists()


def test_unknown_benchmark_and_missing_model_path_fail_clearly(tmp_path):
    r = evaluate(tmp_path, "benchmark=nope")
    assert r.returncode != 0 and "benchmark" in r.stderr and "nope" in r.stderr
    r = evaluate(tmp_path, "model.path=/does/not/exist", "inference=hf")
    assert r.returncode != 0 and "/does/not/exist" in r.stderr and "model.path" in r.stderr
    assert not (tmp_path / ".cache" / "fgrft" / "models").exists()


# ------------------------------------------------------------------------ live backends
def test_hf_backend_end_to_end_and_resume(tmp_path, tiny_path):
    args = [f"model.path={tiny_path}", "inference=hf", "benchmark.limit=3", "temperature.max_new_tokens=8"]
    r = evaluate(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    d = only_run_dir(tmp_path)
    preds = [p for _, p in read_jsonl(d / "predictions.jsonl")]
    assert len(preds) == 9 and all(p["finish_reason"] in {"stop", "length"} for p in preds)
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["throughput"]["items_per_s"] > 0
    # a crash that lost the last completions: the re-run regenerates only those
    partial = d / "completions.partial.jsonl"
    lines = partial.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    r = evaluate(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming: 7 of 9 completions already on disk" in r.stdout + r.stderr
    assert len(partial.read_text().splitlines()) == 9
    _, run = the_run(tmp_path)  # same directory, same MLflow run
    assert run.info.status == "FINISHED"
    # Other sampling in the same directory: the kept completions are stale, and the run says why.
    stale = [f"model.path={tiny_path}", "inference=hf", "benchmark.limit=3", "temperature.max_new_tokens=8",
             "temperature.top_p=0.5", f"hydra.run.dir={d}"]
    r = evaluate(tmp_path, *stale)
    assert r.returncode != 0 and "sampling parameters" in r.stderr and "resume=false" in r.stderr
    # resume=false sets them aside (renamed, not deleted) and starts a fresh MLflow run there.
    r = evaluate(tmp_path, *stale, "resume=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name.split(".set-aside-")[0] for p in d.glob("completions.partial.jsonl.set-aside-*")] == [
        "completions.partial.jsonl"]
    assert len(partial.read_text().splitlines()) == 9
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    assert len(runs) == 2 and (d / "mlflow_run_id").read_text() != run.info.run_id


@pytest.mark.slow
def test_vllm_and_hf_send_identical_prompt_token_ids(vllm_tiny, tiny_path):
    from transformers import AutoTokenizer

    from fgrft.data import load_benchmark
    from fgrft.data.benchmarks import benchmark_items
    from fgrft.prompts import render_all
    from fgrft.evaluation.requests import CompletionSink, GenerationRequest, Sampling, encode_chat, token_ids_hash
    from fgrft.evaluation.backends.vllm import generate_with_engine

    questions = benchmark_items(load_benchmark({"name": "sample", "limit": 2}))
    texts = render_all(load_template("eval_thesis.txt"), questions)
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    messages = [[{"role": "user", "content": t}] for t in texts]
    hf_ids = [encode_chat(tokenizer, m) for m in messages]
    # what vLLM's own chat path would tokenize from the same messages
    outs = vllm_tiny.chat(messages, use_tqdm=False)
    assert [list(o.prompt_token_ids) for o in outs] == hf_ids
    # and what our backend hands the engine arrives unchanged
    requests = [GenerationRequest(key=str(i), messages=m, seed=i, prompt_token_ids=ids)
                for i, (m, ids) in enumerate(zip(messages, hf_ids))]
    sink = CompletionSink(Path(os.environ.get("TMPDIR", "/tmp")) / f"fgrft-ids-{os.getpid()}.jsonl")
    sink.path.unlink(missing_ok=True)
    generate_with_engine(vllm_tiny, requests, Sampling(0.5, 0.9, 4), sink)
    done = sink.done()
    assert [done[r.key].prompt_token_ids_hash for r in requests] == [token_ids_hash(ids) for ids in hf_ids]
    sink.path.unlink()


@pytest.mark.slow
def test_vllm_backend_end_to_end_with_samples(tmp_path, tiny_path):
    r = evaluate(tmp_path, f"model.path={tiny_path}", "benchmark.limit=2", "temperature.max_new_tokens=8",
                 "temperature.n_samples=2", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    d = only_run_dir(tmp_path)
    preds = [p for _, p in read_jsonl(d / "predictions.jsonl")]
    assert len(preds) == 12 and sorted({p["sample"] for p in preds}) == [0, 1]
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["samples"]["n"] == 2
    assert not (d / "vllm_request.json").exists()
