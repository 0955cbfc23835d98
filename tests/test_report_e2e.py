"""The report against a real MLflow store: constructed evaluation runs with the tags,
params, metrics and artifacts an evaluation logs, read in-process and by
`python -m fgrft.report experiment_name=...` run as a subprocess in a fresh directory."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param

from fgrft.reporting.collect import collect_runs
from fgrft.scoring import mlflow_metrics, score_predictions
from tests.test_report_support import ARM_PARAMS, logged_params, outputs, questions, scored, write_artifacts

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "thesis_check"
# The bundled sample's shapes: three sources, PubMedQA with three options.
ITEMS = questions("MedQA_sample", 12) + questions("PubMedQA_sample", 9, n_options=3) + questions("MedMCQA_sample", 10)


def first_k(per_source: dict[str, int]) -> set[int]:
    seen: dict[str, int] = {}
    hits = set()
    for i, q in enumerate(ITEMS):
        seen[q.source] = seen.get(q.source, 0) + 1
        if seen[q.source] <= per_source.get(q.source, 0):
            hits.add(i)
    return hits


class Store:
    """Creates runs the way the tracking layer and an evaluation job leave them."""

    def __init__(self, root: Path):
        self.root = root
        self.client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        self.experiments: dict[str, str] = {}

    def experiment(self, name: str) -> str:
        if name not in self.experiments:
            self.experiments[name] = self.client.create_experiment(
                name, artifact_location=(self.root / "mlruns" / name).as_uri())
        return self.experiments[name]

    def run(self, name: str, *, experiment: str = EXPERIMENT, tags: dict, params: dict | None = None,
            metrics: dict | None = None, artifacts: list[Path] = (), parent: str | None = None,
            status: str = "FINISHED") -> str:
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = self.client.create_run(self.experiment(experiment), run_name=name, tags=tags).info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in (params or {}).items()],
                              metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()])
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status)
        return run_id

    def evaluation(self, name: str, hits: set[int], *, tags: dict, scorer: str = "thesis",
                   model: str = "llama31_8b_instruct", temperature: float = 0.5, prompt_hash: str = "prompt-v1",
                   extra: dict | None = None, **kw) -> str:
        preds, metrics = scored(ITEMS, outputs(ITEMS, hits), scorer)
        # As the evaluation job writes them: each line with both scorers' readings.
        both = score_predictions(preds, scorer, audit=False).by_scorer
        files = write_artifacts(self.root / "made" / name, [{**p.to_dict(), **b} for p, b in zip(preds, both)],
                                metrics)
        params = logged_params(ITEMS, model=model, temperature=temperature, scorer=scorer, scale="toy",
                               prompt_hash=prompt_hash, extra=extra)
        return self.run(name, tags=tags, params=params, metrics=mlflow_metrics(metrics), artifacts=files, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("report_store"))
    ev = {"stage": "evaluate", "git_commit": "abc", "host": "test"}
    # A `base` preset-like sweep: a parent and two evaluation children.
    parent = s.run("multirun-base", tags={**ev, "sweep_id": "sweepbase", "sweep_parent": "true"})
    s.evaluation("base", first_k({"MedQA_sample": 6, "PubMedQA_sample": 6, "MedMCQA_sample": 4}),
                 tags={**ev, "sweep_id": "sweepbase"}, parent=parent)
    s.evaluation("med42", first_k({"MedQA_sample": 7, "PubMedQA_sample": 5, "MedMCQA_sample": 5}),
                 tags={**ev, "sweep_id": "sweepbase"}, parent=parent, model="med42_8b")
    # A training job (evaluate_after): its evaluation is a nested child that carries no data params
    # and no sweep tag of its own; the arm and the sweep come from the training run.
    train = s.run("train-fgrft", tags={"stage": "train", "sweep_id": "sweeptrain"},
                  params={**ARM_PARAMS["fgrft"], "trainer.seed": "42", "model.name": "llama31_8b_instruct"})
    s.evaluation("fgrft-after-train", first_k({"MedQA_sample": 9, "PubMedQA_sample": 7, "MedMCQA_sample": 6}),
                 tags={"stage": "train"}, parent=train)
    # The checkpoint evaluated again at 0.7 (temperature_sweep): known only by its lineage params.
    s.evaluation("fgrft-t0.7", first_k({"MedQA_sample": 8, "PubMedQA_sample": 7, "MedMCQA_sample": 6}),
                 tags={**ev, "sweep_id": "sweeptemp"}, temperature=0.7,
                 extra={"train_run_id": train, "base_model": "meta-llama/Llama-3.1-8B-Instruct",
                        "data_hash": "d1"})
    # A naive-CoT arm evaluated with another prompt: every pair with it must be refused.
    naive_train = s.run("train-naive", tags={"stage": "train", "sweep_id": "sweeptrain"},
                        params={**ARM_PARAMS["naive_cot_raw"], "trainer.seed": "42"})
    s.evaluation("naive-other-prompt", first_k({"MedQA_sample": 8}), tags={**ev, "sweep_id": "sweepn"},
                 prompt_hash="prompt-v2", extra={"train_run_id": naive_train})
    # A model scored strictly: its own row in the strict table and, read again by the thesis
    # scorer from the same outputs, in the thesis table; no claim for it.
    s.evaluation("base-strict", first_k({"MedQA_sample": 5}), tags={**ev, "sweep_id": "sweepstrict"},
                 scorer="strict", model="smol")
    # Not read: a failed run (listed as skipped) and a run in another experiment.
    s.evaluation("crashed", set(), tags={**ev, "sweep_id": "sweepx"}, status="FAILED")
    s.evaluation("elsewhere", set(), tags={**ev, "sweep_id": "sweepy"}, experiment="other")
    return s


def test_collect_reads_evaluations_nested_children_and_lineage(store, tmp_path):
    col = collect_runs(store.client, [EXPERIMENT], None, tmp_path)
    runs = {r.name: r for r in col.runs}
    assert set(runs) == {"base", "med42", "fgrft-after-train", "fgrft-t0.7", "naive-other-prompt", "base-strict"}
    assert runs["fgrft-after-train"].arm == "fgrft" and runs["fgrft-t0.7"].arm == "fgrft"
    assert runs["naive-other-prompt"].arm == "naive_cot_raw" and runs["base"].arm == "base"
    assert runs["fgrft-after-train"].replicate == "trainer.seed=42 temperature.seed=42"
    assert runs["base"].per_source["MedQA_sample"].correct == 6
    assert len(runs["base"].predictions) == len(ITEMS)
    assert [why for who, why in col.skipped] == ["status FAILED"] and "crashed" in col.skipped[0][0]


def test_collect_filters_by_sweep_through_parents(store, tmp_path):
    by_sweep = {sid: {r.name for r in collect_runs(store.client, None, sid, tmp_path).runs}
                for sid in ("sweepbase", "sweeptrain", "nope")}
    assert by_sweep == {"sweepbase": {"base", "med42"}, "sweeptrain": {"fgrft-after-train"}, "nope": set()}
    col = collect_runs(store.client, [EXPERIMENT], "nope", tmp_path)
    assert "sweepbase" in col.notes[0]


def test_python_m_fgrft_report_end_to_end(store):
    root = store.root
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "fgrft.report", f"experiment_name={EXPERIMENT}",
                        "bootstrap_resamples=2000"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = [p.parent for p in (root / "outputs" / "report").rglob("mlflow_run_id")]
    names = {p.name for p in run_dir.iterdir()}
    assert {"tables.md", "tables.csv", "paired.csv", "accuracy_toy_thesis_thesis.png",
            "accuracy_toy_strict_thesis.png", "paired_toy_thesis.png"} <= names

    md = (run_dir / "tables.md").read_text()
    assert "Toy scale" in md
    # base: MedQA 6/12, PubMedQA 6/9, MedMCQA 4/10, avg 16/31, each with its delta to the thesis (marked †)
    # (‡: a legacy-scorer CI, chosen-reading caveat beside it)
    assert ("| llama31_8b_instruct | 0.5 | 1 | 50.0 [25.4, 74.6]‡ Δ†-8.90 ✗ | 66.7 [35.4, 87.9]‡ Δ†-10.13 ✗ |"
            in md)
    assert "51.6 [34.8, 68.0]‡ Δ†-11.19 ✗" in md
    assert "‡ Legacy (thesis) scorer" in md
    # Every run appears under both scorers, and the per-item difference between them is listed.
    assert "| smol | 0.5 | 1 | 41.7 [19.3, 68.0] |" in md  # strict table: 5 of 12
    assert "## Strict vs legacy scorer on the same outputs" in md
    assert "| llama31_8b_instruct + FGRFT | 0.7 |" in md
    assert "different prompts (prompt_hash prompt-v2 vs prompt-v1)" in md
    assert "- crashed (" in md and "status FAILED" in md
    assert "- no run (" in md and "`main/qwen/MedQA`" in md
    assert "elsewhere" not in md

    with (run_dir / "paired.csv").open() as f:
        paired = list(csv.DictReader(f))
    fgrft_vs_base = [p for p in paired if p["factor"] == "data arm" and p["column"] == "MedQA"
                     and p["status"] == "compared"]
    # The same pair under each scorer: the runs' outputs read by both, no second generation.
    assert sorted(p["scorer"] for p in fgrft_vs_base) == ["strict", "thesis"]
    (row,) = [p for p in fgrft_vs_base if p["scorer"] == "thesis"]
    assert row["a"].startswith("llama31_8b_instruct + FGRFT") and row["b"] == "llama31_8b_instruct T=0.5"
    assert (float(row["difference"]), row["a_only"], row["b_only"], float(row["p_value"])) == (0.25, "3", "0", 0.25)
    refused = [p for p in paired if p["status"] == "refused"]
    assert refused and all("different prompts" in p["reason"] for p in refused)
    assert {p["factor"] for p in paired if p["status"] == "compared"} == {"data arm", "temperature", "model"}

    with (run_dir / "tables.csv").open() as f:
        table = list(csv.DictReader(f))
    (cell,) = [t for t in table if t["section"] == "accuracy" and t["row"] == "llama31_8b_instruct"
               and t["column"] == "MedMCQA" and t["scorer"] == "thesis"]
    assert (float(cell["value"]), cell["correct"], cell["total"], cell["status"]) == (0.4, "4", "10", "caveat")

    # The report run itself: tagged stage=report, its files logged as artifacts.
    client = store.client
    (report_run,) = client.search_runs([store.experiments[EXPERIMENT]], "tags.stage = 'report'")
    artifacts = {a.path for a in client.list_artifacts(report_run.info.run_id)}
    assert {"tables.md", "tables.csv", "paired.csv", "paired_toy_thesis.png"} <= artifacts
    assert report_run.data.metrics["report/runs"] == 6
