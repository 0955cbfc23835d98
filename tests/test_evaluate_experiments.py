"""The evaluation presets run for real at toy scale and land in MLflow as grouped sweeps.

`inference=hf` keeps them cheap here (no engine start per job); the presets and the
sweep machinery are the same ones a vLLM run uses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

TOY = ["scale=toy", "inference=hf", "benchmark.limit=1", "temperature.max_new_tokens=4"]


def evaluate(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "fgrft.evaluate", *args, f"paths.cache={cache}"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def sweep_runs(root: Path, experiment: str):
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


@pytest.mark.parametrize("preset,arm_param,arms", [
    ("temperature_sweep", "temperature.name", {"t0.5", "t0.7"}),
    ("baselines", "model_label", {"llama31_8b_instruct", "med42_8b", "qwen25_7b_instruct", "biomistral_7b"}),
    ("base", "model_label", {"llama31_8b_instruct"}),
])
def test_preset_runs_at_toy_scale_as_a_grouped_sweep(tmp_path, smol_path, model_cache_dir, preset, arm_param, arms):
    r = evaluate(tmp_path, model_cache_dir, "-m", f"+experiment={preset}", *TOY)
    assert r.returncode == 0, r.stderr[-3000:]
    parent, children = sweep_runs(tmp_path, preset)
    assert parent.info.status == "FINISHED"
    assert {c.data.params[arm_param] for c in children} == arms
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert c.data.params["scale"] == "toy" and c.data.params["model.builder"] == "smol"
        assert set(c.data.metrics) >= {"accuracy/overall", "accuracy/MedQA_sample", "ci_low/PubMedQA_sample"}
    # the arms evaluate the same items with the same prompt, so the report can pair them
    assert len({c.data.params["items_hash"] for c in children}) == 1
    assert len({c.data.params["prompt_hash"] for c in children}) == 1


def test_several_samples_per_item_with_distinct_seeds(tmp_path, smol_path, model_cache_dir):
    r = evaluate(tmp_path, model_cache_dir, *TOY, "temperature.n_samples=3", "temperature.max_new_tokens=12")
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["samples"]["n"] == 3
    assert {"mean", "sd", "majority_vote"} <= set(metrics["samples"])
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 9
    by_item: dict[str, list[str]] = {}
    for p in preds:
        by_item.setdefault(p["id"], []).append(p["output"])
    # seeds differ per sample, so three samples of one item are not all the same text
    assert any(len(set(outputs)) > 1 for outputs in by_item.values())
