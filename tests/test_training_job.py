"""`python -m fgrft.train` end to end on the tiny model: a run killed with SIGKILL resumes in the
same directory and MLflow run and ends where an uninterrupted run ends; its checkpoint
evaluates with inference=hf and loads in vLLM; bad input fails before training."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from fgrft.config import CONF_DIR, register_resolvers, validate
from fgrft.config.scale import apply_scale
from fgrft.data import load_benchmark
from fgrft.models import ModelSpecError, has_generation_markers
from fgrft.records import RecordError
from fgrft.tracking import JobInfo, TrackedRun
from fgrft.training.formatting import FormattingError
from fgrft.training.job import prepare, train_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
REPO = Path(__file__).resolve().parent.parent
MAX_STEPS = 8  # 12 records at micro-batch 2: crosses an epoch boundary after the resume
TRAIN_ARGS = ["model=tiny", "data=sample", "trainer=cpu", f"trainer.max_steps={MAX_STEPS}", "trainer.save_steps=2",
              "trainer.max_seq_len=200", "trainer.learning_rate=1e-3"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # MLflow samples system metrics every 10 s by default: a resumed run on an idle machine can
    # end before its first sample. Sampling every second keeps the system-metrics check about
    # logging being on, not about how fast the host is.
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    return env


def _compose(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return apply_scale(validate(compose(config_name="train", overrides=overrides), "train"))


class OfflineRun(TrackedRun):
    """A TrackedRun that logs nowhere (for in-process jobs without an MLflow store)."""

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass


@dataclass
class KilledAndResumed:
    root: Path
    run_dir: Path
    killed_at: list[str]
    summary: dict


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, model_cache_dir) -> KilledAndResumed:
    root = tmp_path_factory.mktemp("train-cli")
    cmd = [sys.executable, "-m", "fgrft.train", *TRAIN_ARGS, f"paths.cache={model_cache_dir}"]
    log = (root / "first.log").open("w")
    first = subprocess.Popen(cmd, cwd=root, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if list(root.glob("outputs/train/*/*/checkpoints/checkpoint-*/trainer_state.json")):
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert first.wait(timeout=60) == -signal.SIGKILL, (root / "first.log").read_text()[-3000:]
    (run_dir,) = [p.parent for p in root.glob("outputs/train/*/*/mlflow_run_id")]
    killed_at = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert not (run_dir / "summary.json").exists()

    second = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
    return KilledAndResumed(root, run_dir, killed_at, json.loads((run_dir / "summary.json").read_text()))


def test_killed_run_resumes_in_the_same_directory_and_mlflow_run(resumed):
    s = resumed.summary
    assert s["steps"] == MAX_STEPS
    assert s["resumed_from"] and Path(s["resumed_from"]).name in resumed.killed_at
    assert s["truncated_samples"] == 12 and s["examples"] == 12  # every record is longer than 200 tokens
    assert s["padding_fraction"] == 0.0 and s["tokens"] > 0 and s["tokens_per_s"] > 0
    assert s["contamination"]["overlaps"] == [] and s["contamination"]["dropped"] == []
    # At most max_ckpts intermediate checkpoints, holding everything a resume needs.
    kept = sorted((resumed.run_dir / "checkpoints").glob("checkpoint-*"))
    assert 1 <= len(kept) <= 2 and kept[-1].name == f"checkpoint-{MAX_STEPS}"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors"):
        assert (kept[-1] / name).is_file(), name

    client = mlflow.MlflowClient(f"sqlite:///{resumed.root / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "default"]
    (run,) = client.search_runs([exp.experiment_id])  # the re-run reattached instead of opening a second run
    assert run.info.run_id == (resumed.run_dir / "mlflow_run_id").read_text()
    assert run.info.status == "FINISHED"
    assert run.data.params["base_model"] == "tiny" and run.data.params["data_hash"] == s["data_hash"]
    assert {"padding_fraction", "tokens_per_s", "loss", "grad_norm", "learning_rate"} <= set(run.data.metrics)
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == MAX_STEPS
    # In the MLflow UI: a readable name, the records as the training dataset, the checkpoint as a model
    assert run.info.run_name == "train tiny sample seed42"
    assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow's own system metrics
    (data,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"
    assert data.dataset.name == "sample" and data.dataset.digest == s["data_hash"][:36]
    assert json.loads(data.dataset.profile)["num_rows"] == s["examples"]
    (model,) = client.search_logged_models([exp.experiment_id])  # once, though the run was started twice
    assert model.source_run_id == run.info.run_id and model.tags["mlflow.model.isExternal"] == "true"
    assert model.tags["checkpoint"] == str(resumed.run_dir / "checkpoint")
    assert model.params == {"base_model": "tiny", "data_hash": s["data_hash"], "train_run_id": run.info.run_id,
                            "steps": str(MAX_STEPS)}


def test_final_checkpoint_has_stock_template_bf16_weights_and_lineage(resumed, tiny_path):
    ckpt = resumed.run_dir / "checkpoint"
    lineage = json.loads((ckpt / "fgrft.json").read_text())
    assert lineage == {"base_model": "tiny", "data_hash": resumed.summary["data_hash"],
                       "train_run_id": (resumed.run_dir / "mlflow_run_id").read_text(), "steps": MAX_STEPS}
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "bfloat16"
    assert (ckpt / "chat_template.jinja").read_text() == (tiny_path / "chat_template.jinja").read_text()
    assert not has_generation_markers((ckpt / "chat_template.jinja").read_text())


def test_resumed_run_ends_where_an_uninterrupted_run_ends(resumed, model_cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _compose([*TRAIN_ARGS, f"paths.cache={model_cache_dir}"])
    run_dir = tmp_path / "uninterrupted"
    summary = train_job(cfg, OfflineRun(run_id="offline", job=JobInfo("train", run_dir, None)))
    assert summary["steps"] == resumed.summary["steps"] == MAX_STEPS
    assert summary["resumed_from"] is None
    assert summary["final_loss"] == pytest.approx(resumed.summary["final_loss"], rel=1e-5)
    assert summary["tokens"] == resumed.summary["tokens"]  # counted across the kill, not twice
    assert summary["data_hash"] == resumed.summary["data_hash"]


def test_checkpoint_evaluates_with_inference_hf(resumed):
    ckpt = resumed.run_dir / "checkpoint"
    r = subprocess.run([sys.executable, "-m", "fgrft.evaluate", f"model.path={ckpt}", "inference=hf",
                        "benchmark.limit=1", "temperature.max_new_tokens=8"],
                       cwd=resumed.root, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    (metrics,) = resumed.root.glob("outputs/evaluate/*/*/metrics.json")
    assert json.loads(metrics.read_text())["overall"]["total"] == 3
    client = mlflow.MlflowClient(f"sqlite:///{resumed.root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id],
                                filter_string="tags.stage = 'evaluate'")
    assert run.data.params["train_run_id"] == (resumed.run_dir / "mlflow_run_id").read_text()
    assert run.data.params["data_hash"] == resumed.summary["data_hash"]
    # The evaluation names the checkpoint's model as an input and its metrics land on the model page
    assert run.info.run_name == "evaluate smol+sample t0.5 strict"  # the label given (model=smol), its arm
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == [model.model_id]
    linked = {m.key: m for m in client.get_logged_model(model.model_id).metrics}
    assert linked["accuracy/overall"].run_id == run.info.run_id
    assert linked["accuracy/overall"].value == run.data.metrics["accuracy/overall"]


@pytest.mark.slow
def test_checkpoint_loads_in_vllm(resumed, _vllm_slot):
    from vllm import SamplingParams

    llm = _vllm_slot.activate("fgrft-trained-tiny", resumed.run_dir / "checkpoint")
    try:
        (out,) = llm.chat([[{"role": "user", "content": "Please answer: A. yes\nB. no"}]],
                          SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
        assert out.outputs[0].token_ids
    finally:
        _vllm_slot.close()  # the shared slot holds one engine; give the memory back now


def test_evaluate_after_is_a_nested_child_of_the_training_run(resumed, tmp_path, monkeypatch, model_cache_dir):
    from fgrft.evaluation.job import run_evaluation
    from fgrft.training.evaluate_after import evaluate_checkpoint

    monkeypatch.chdir(tmp_path)
    cfg = _compose([*TRAIN_ARGS, f"paths.cache={model_cache_dir}", "evaluate_after=true", "inference=hf",
                    "benchmark.limit=1", "temperature.max_new_tokens=4"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run() as parent:
            mlflow.set_tags({"sweep_id": "s1", "stage": "train"})
            overall = evaluate_checkpoint(cfg, resumed.run_dir / "checkpoint", tmp_path / "run", run_evaluation)
    finally:
        mlflow.set_tracking_uri(previous)
    assert overall["total"] == 3
    client = mlflow.MlflowClient(uri)
    (child,) = client.search_runs([parent.info.experiment_id], filter_string="tags.stage = 'evaluate'")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["sweep_id"] == "s1"
    assert child.data.params["train_run_id"] == (resumed.run_dir / "mlflow_run_id").read_text()
    assert "accuracy/overall" in child.data.metrics
    assert (tmp_path / "run" / "evaluation" / "predictions.jsonl").is_file()


def test_lora_trains_adapters_and_saves_a_merged_plain_checkpoint(model_cache_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    cfg = _compose(["model=tiny", "trainer=cpu", f"paths.cache={model_cache_dir}", "trainer.max_steps=2",
                    "trainer.max_seq_len=200", "trainer.learning_rate=1e-2", "trainer.save_steps=100",
                    "trainer.lora={r:4,alpha:8,dropout:0.0,target_modules:all-linear}"])
    summary = train_job(cfg, OfflineRun(run_id="offline", job=JobInfo("train", tmp_path / "lora", None)))
    assert summary["steps"] == 2
    ckpt = tmp_path / "lora" / "checkpoint"
    assert not (ckpt / "adapter_config.json").exists()  # adapters merged: a plain model for vLLM/HF
    trained = load_file(ckpt / "model.safetensors")
    base = load_file(Path(cfg.paths.cache) / "models" / "tiny" / "model.safetensors")
    assert set(trained) == set(base) and all(not k.startswith("base_model") for k in trained)
    changed = [k for k in base if not torch.equal(trained[k], base[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only the LoRA-targeted linears


# --- bad input fails before training -------------------------------------------------------

@pytest.fixture
def in_tmp(tmp_path, monkeypatch, model_cache_dir):
    monkeypatch.chdir(tmp_path)
    return lambda *overrides: _compose(["model=tiny", "trainer=cpu", f"paths.cache={model_cache_dir}", *overrides])


def _write_records(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(question: str, **extra) -> dict:
    return {"Question": question, "Complex_CoT": "Okay, thinking it through.", "Response": "The answer is A.", **extra}


def test_record_without_cot_fails_naming_file_record_and_field(in_tmp, tmp_path):
    bad = _row("Which one?\nA. x\nB. y")
    del bad["Complex_CoT"]
    data = _write_records(tmp_path / "records.jsonl", [_row("Which is it?\nA. x\nB. y"), bad])
    with pytest.raises(RecordError, match=r"records.jsonl: record 1: field 'Complex_CoT': missing"):
        prepare(in_tmp(f"data.path={data}"))


def test_empty_dataset_fails(in_tmp, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    with pytest.raises(RecordError, match="empty.jsonl: the file is empty"):
        prepare(in_tmp(f"data.path={data}"))


def test_prompt_longer_than_max_seq_len_fails(in_tmp):
    with pytest.raises(FormattingError, match=r"data=sample: record \w+: field 'Question': the prompt is \d+ tokens"):
        prepare(in_tmp("trainer.max_seq_len=64"))


def test_unknown_model_path_fails(in_tmp, tmp_path):
    with pytest.raises(ModelSpecError, match="model.path '.*nowhere' does not exist"):
        prepare(in_tmp(f"model.path={tmp_path / 'nowhere'}"))


def test_multi_machine_trainer_without_main_process_ip_is_refused_up_front(in_tmp):
    from fgrft.config import ConfigError

    with pytest.raises(ConfigError, match="num_machines=2 needs trainer.main_process_ip"):
        prepare(in_tmp("trainer=cpu_zero3", "trainer.num_machines=2"))
    with pytest.raises(ConfigError, match="lora with distributed=zero3"):
        prepare(in_tmp("trainer=cpu_zero3", "trainer.lora={r:4,alpha:8,dropout:0.0,target_modules:all-linear}"))


def test_contaminated_questions_are_dropped_and_listed(in_tmp, tmp_path):
    leaked = load_benchmark({"name": "sample"})["MedQA_sample"][0]
    data = _write_records(tmp_path / "records.jsonl", [_row(leaked.text_with_options),
                                                       _row("An unrelated question about vitamins?\nA. C\nB. D")])
    prepared = prepare(in_tmp(f"data.path={data}"))
    contamination = prepared.contamination
    assert len(prepared.tokenized.examples) == 1
    assert len(contamination["dropped"]) == 1
    assert [o["eval_id"] for o in contamination["overlaps"]] == [leaked.id]
    assert contamination["overlaps"][0]["kind"] == "exact"


def test_resume_takes_the_newest_complete_checkpoint_of_the_same_data(tmp_path):
    from fgrft.training.lineage import claim_checkpoints, latest_checkpoint

    root = tmp_path / "checkpoints"
    for step, state in ((2, "{}"), (4, "{}"), (6, None), (10, '{"trunc')):  # 6 and 10: killed mid-save
        (root / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (root / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert latest_checkpoint(root) == root / "checkpoint-4"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert latest_checkpoint(tmp_path / "none") is None
    claim_checkpoints(root, "aaaa")
    claim_checkpoints(root, "aaaa")
    with pytest.raises(RuntimeError, match="other training data .*aaaa.*bbbb"):
        claim_checkpoints(root, "bbbb")
