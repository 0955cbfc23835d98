"""`python -m fgrft.train` starts distributed training itself: a real 2-process data-parallel job
over gloo and ZeRO-3 jobs of 1 and 2 processes on CPU, each rank recording the world it saw; the ZeRO-3
checkpoint is consolidated and reloads in a fresh process. Two SLURM nodes are simulated as two local
process groups and must train exactly like one machine with two processes. The launch settings are
generated from the trainer group (the thesis's 2 x 8 x 8 = 128)."""
from __future__ import annotations

import dataclasses

import json
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from fgrft.training.launch import accelerate_config, deepspeed_config, is_distributed, write_launch_files

from .test_training_job import _compose, _env

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TINY = ["model=tiny", "trainer.max_steps=3", "trainer.save_steps=2", "trainer.max_seq_len=200"]


def _trainer(*overrides: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(_compose(list(overrides)).trainer, resolve=True)


# --- generated settings -----------------------------------------------------------------

def test_thesis_trainer_generates_zero3_with_effective_batch_128():
    t = _trainer("trainer=zero3_8gpu")
    assert is_distributed(t)
    ds = deepspeed_config(t, bf16=True)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 8, 128)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["offload_optimizer"]["device"] == z["offload_param"]["device"] == "none"
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is True
    acc = accelerate_config(t, gpu=True)
    assert acc["num_processes"] == 8 and acc["mixed_precision"] == "bf16"


def test_multi_node_keys_pass_through_to_accelerate(tmp_path):
    t = _trainer("trainer=zero3_8gpu", "trainer.num_machines=2", "trainer.machine_rank=1",
                 "trainer.main_process_ip=10.0.0.1", "trainer.main_process_port=29600")
    # The global batch stays the thesis's 128 over 16 ranks: accumulation 8 -> 4.
    ds = deepspeed_config(t, bf16=True)
    assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 2 * 4 * 16)
    cmd = write_launch_files({"trainer": t}, tmp_path, gpu=True, bf16=True)
    acc = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    assert (acc["num_processes"], acc["num_machines"], acc["machine_rank"]) == (16, 2, 1)
    assert (acc["main_process_ip"], acc["main_process_port"]) == ("10.0.0.1", 29600)
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / "accelerate.yaml")
    assert cmd[-3:] == ["-m", "fgrft.training.worker", str(tmp_path)]
    assert json.loads((tmp_path / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3


def test_single_process_cpu_trainer_stays_in_process():
    assert not is_distributed(_trainer("trainer=cpu"))
    assert is_distributed(_trainer("trainer=cpu", "trainer.num_processes=2"))
    assert is_distributed(_trainer("trainer=cpu_zero3", "trainer.num_processes=1"))


# --- real runs --------------------------------------------------------------------------

def _train(root: Path, cache: Path, *overrides: str) -> Path:
    run_dir = root / "run"
    cmd = [sys.executable, "-m", "fgrft.train", *TINY, *overrides, f"paths.cache={cache}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, cwd=root, env=_rank_env(), capture_output=True, text=True, timeout=480)
    launch_log = (run_dir / "launch.log").read_text()[-4000:] if (run_dir / "launch.log").is_file() else ""
    assert done.returncode == 0, done.stderr[-3000:] + launch_log
    return run_dir


def _rank_env() -> dict[str, str]:
    # One thread per rank in every layout, so one machine and two simulated nodes compute alike.
    return {**_env(), "OMP_NUM_THREADS": "1"}


def _ranks(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "ranks").glob("rank*.json"))]


def _only_run(root: Path):
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "default"]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the ranks attached; none opened a run
    return client, runs[0]


@pytest.mark.slow
def test_two_process_data_parallel_over_gloo(tmp_path, model_cache_dir, tiny_path):
    run_dir = _train(tmp_path, model_cache_dir, "trainer=cpu", "trainer.num_processes=2")
    ranks = _ranks(run_dir)
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:  # the silent bug would show num_processes 1 here
        assert r["num_processes"] == r["env_world_size"] == 2 and r["process_index"] == r["rank"]
        assert r["backend"] == "gloo" and r["distributed_type"].endswith("MULTI_CPU")
    s = json.loads((run_dir / "summary.json").read_text())
    # 12 examples, micro-batch 2 on 2 ranks: 3 steps are exactly one epoch of the sharded data.
    assert s["world_size"] == 2 and s["steps"] == 3
    assert json.loads((run_dir / "checkpoint" / "fgrft.json").read_text())["steps"] == 3
    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]  # logged once per step: by rank 0 only


@pytest.fixture(scope="module")
def zero3_one_machine(tmp_path_factory, model_cache_dir, tiny_path) -> Path:
    """ZeRO-3 on one machine with two CPU processes: checked below, and the reference of the two-node run."""
    root = tmp_path_factory.mktemp("zero3_one_machine")
    _train(root, model_cache_dir, "trainer=cpu_zero3", "trainer.num_processes=2")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_zero3_on_cpu_processes_saves_a_consolidated_checkpoint(processes, tmp_path, model_cache_dir, tiny_path,
                                                                request):
    if processes == 2:
        root = request.getfixturevalue("zero3_one_machine")
    else:
        root = tmp_path
        _train(root, model_cache_dir, "trainer=cpu_zero3", f"trainer.num_processes={processes}")
    run_dir = root / "run"
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 2 * processes
    for r in _ranks(run_dir):
        assert r["num_processes"] == r["env_world_size"] == processes
        assert r["backend"] == "gloo" and r["distributed_type"].endswith("DEEPSPEED")
    assert len(_ranks(run_dir)) == processes
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["world_size"] == processes and s["steps"] == 3
    _, run = _only_run(root)
    assert run.info.status == "FINISHED"
    # A fresh process (no DeepSpeed state) loads full, trained weights in the base dtype.
    probe = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "a = AutoModelForCausalLM.from_pretrained(sys.argv[1]); b = AutoModelForCausalLM.from_pretrained(sys.argv[2])\n"
        "sa, sb = a.state_dict(), b.state_dict()\n"
        "print(json.dumps({'dtype': str(a.dtype), 'same_shapes': all(sa[k].shape == sb[k].shape for k in sb),\n"
        "  'nonempty': all(v.numel() > 0 for v in sa.values()),\n"
        "  'changed': any(not torch.equal(sa[k].float(), sb[k].float()) for k in sb)}))\n")
    out = subprocess.run([sys.executable, "-c", probe, str(run_dir / "checkpoint"), str(tiny_path)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"dtype": "torch.bfloat16", "same_shapes": True, "nonempty": True, "changed": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    return weights


@pytest.mark.slow
def test_two_slurm_nodes_simulated_train_like_one_machine(tmp_path, model_cache_dir, tiny_path, zero3_one_machine):
    """Two "nodes" as two local process groups with a 2-node SLURM job's variables, one CPU rank each."""
    import torch

    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer=cpu_zero3", "trainer.num_processes=1", "trainer.num_machines=2",
                 f"trainer.main_process_port={_free_port()}", f"paths.cache={model_cache_dir}", "node_wait_s=300"]
    # SLURM_JOB_ID 7000: port offset 7000 mod 1000 = 0, so the free port above is the one used.
    job = {"SLURM_JOB_ID": "7000", "SLURM_JOB_NODELIST": "localhost,localhost", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    node = {k: {**_rank_env(), **job, "SLURM_NODEID": str(k), "SLURM_PROCID": str(k)} for k in (0, 1)}
    main = subprocess.Popen([sys.executable, "-m", "fgrft.train", *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=node[0], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    follower = subprocess.Popen([sys.executable, "-m", "fgrft.training.slurm", "follow", str(run_dir), *overrides],
                                cwd=tmp_path, env=node[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out1 = follower.communicate(timeout=600)[0]
        out0 = main.communicate(timeout=600)[0]
    finally:
        for p in (main, follower):
            p.kill() if p.poll() is None else None
    assert main.returncode == 0, out0[-3000:]
    assert follower.returncode == 0, out1[-3000:]

    ranks = _ranks(run_dir)
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:  # each "node" ran one process, and both saw the one world of 2
        assert r["num_processes"] == r["env_world_size"] == 2 and r["process_index"] == r["rank"]
        assert r["backend"] == "gloo" and r["distributed_type"].endswith("DEEPSPEED")
    node1 = yaml.safe_load((run_dir / "nodes" / "node1" / "accelerate.yaml").read_text())
    assert (node1["machine_rank"], node1["num_machines"], node1["num_processes"]) == (1, 2, 2)
    assert (run_dir / "nodes" / "node1" / "launch.log").is_file()
    assert json.loads((run_dir / "nodes" / "main.json").read_text())["main_process_ip"] == "localhost"

    reference = zero3_one_machine / "run"
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    print(f"final loss: two nodes x 1 process {ours['final_loss']!r}, one machine x 2 processes {theirs['final_loss']!r}")
    assert ours["steps"] == theirs["steps"] == 3 and ours["world_size"] == theirs["world_size"] == 2
    assert ours["final_loss"] == pytest.approx(theirs["final_loss"], rel=1e-5, abs=1e-6)
    a, b = _weights(run_dir / "checkpoint"), _weights(reference / "checkpoint")
    assert sorted(a) == sorted(b) and a
    for name in b:
        assert a[name].dtype == b[name].dtype and torch.allclose(a[name].float(), b[name].float(), atol=1e-6), name
    client, run = _only_run(tmp_path)  # node 1 opened no run
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3]


# --- ablation arms on the same question ids ----------------------------------------------

def _prepare(tmp_path, monkeypatch, model_cache_dir, *overrides):
    from fgrft.training.job import prepare

    monkeypatch.chdir(tmp_path)
    return prepare(_compose(["model=tiny", "trainer=cpu", f"paths.cache={model_cache_dir}", *overrides]))


def test_naive_arms_take_the_fgrft_question_ids_and_report_the_match(tmp_path, monkeypatch, model_cache_dir):
    from fgrft.data import load_training_records

    fgrft = load_training_records({"name": "sample", "format": "fgrft"})
    subset = tmp_path / "fgrft_records.jsonl"
    subset.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in fgrft[:5]))
    for data in ("sample_naive", "sample_naive target_format=thinking"):
        name, *extra = data.split()
        p = _prepare(tmp_path, monkeypatch, model_cache_dir, f"data={name}", *[f"data.{e}" for e in extra],
                     f"fgrft_records={subset}")
        assert p.ids_matched == {"ids_from": str(subset), "ids_requested": 5, "ids_matched": 5}
        assert len(p.tokenized.examples) == 5
    # The FGRFT arm (no data.path) trains on the file itself; data.path still wins when set.
    p = _prepare(tmp_path, monkeypatch, model_cache_dir, "data=fgrft_5k", f"fgrft_records={subset}")
    assert len(p.tokenized.examples) == 5 and p.ids_matched is None
    # Without fgrft_records a naive arm keeps its own selection (here: the whole bundled set).
    assert _prepare(tmp_path, monkeypatch, model_cache_dir, "data=sample_naive").ids_matched is None


def test_arms_train_on_the_shared_ids_and_fail_below_min_id_match(tmp_path, monkeypatch, model_cache_dir):
    from fgrft.data import load_training_records

    fgrft = load_training_records({"name": "sample", "format": "fgrft"})
    naive = load_training_records({"name": "sample_naive", "format": "naive_cot"})
    # FGRFT ids: 9 bundled questions plus one the naive-CoT set lacks (a 90% match).
    extra = dataclasses.replace(fgrft[0], Question=fgrft[0].Question.replace("?", ", first presentation?", 1),
                                id="extra")
    assert extra.stem_id not in {r.stem_id for r in naive}
    records = tmp_path / "fgrft_records.jsonl"
    records.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in [*fgrft[:9], extra]))
    shared = [f"fgrft_records={records}", "shared_ids_with=sample_naive"]
    for data in ("fgrft_5k", "sample_naive"):
        with pytest.raises(ValueError, match=r"only 9 of the 10 FGRFT question ids \(90\.0%\)"):
            _prepare(tmp_path, monkeypatch, model_cache_dir, f"data={data}", *shared)
        p = _prepare(tmp_path, monkeypatch, model_cache_dir, f"data={data}", *shared, "min_id_match=0.9")
        assert p.ids_matched["ids_requested"] == 10 and p.ids_matched["ids_matched"] == 9
        assert sorted(e.record_id for e in p.tokenized.examples) != []
        ids = {r.stem_id for r in fgrft[:9]}
        trained = {e.record_id for e in p.tokenized.examples}
        assert len(trained) == 9 and extra.id not in trained
        assert {r.stem_id for r in (fgrft if data == "fgrft_5k" else naive) if r.id in trained} == ids


def test_ablation_preset_sweeps_three_arms_and_composes_with_seeds():
    from hydra import compose, initialize_config_dir

    from fgrft.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=ablation_naive"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.data == "fgrft_5k,naive_cot_5k,naive_cot_5k_structured"
    assert cfg.evaluate_after is True and cfg.fgrft_records is None
    # -m +experiment=ablation_naive trainer.seed=42,43 adds a sweep axis on top of the arms.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        seeded = compose(config_name="train", overrides=["+experiment=ablation_naive", "trainer.seed=43",
                                                         "data=naive_cot_5k"])
    assert seeded.trainer.seed == 43 and seeded.data.name == "naive_cot_5k"


@pytest.mark.slow
def test_toy_ablation_is_one_parent_with_three_arms_each_with_its_evaluation(tmp_path, model_cache_dir, tiny_path):
    sweep = tmp_path / "sweep"
    # scale=toy maps every model option to smol; an explicit model.path (the tiny model) is kept.
    cmd = [sys.executable, "-m", "fgrft.train", "-m", "+experiment=ablation_naive", "scale=toy", "model=tiny",
           f"model.path={tiny_path}",
           "inference=hf", "trainer.max_seq_len=400", f"paths.cache={model_cache_dir}", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-4000:]
    summaries = [json.loads((d / "summary.json").read_text()) for d in sweep.iterdir() if (d / "summary.json").is_file()]
    assert len(summaries) == 3
    arms_matched = [s for s in summaries if "ids_matched" in s]
    assert len(arms_matched) == 3 and all(s["ids_matched"] == s["ids_requested"] == 12 for s in arms_matched)
    assert all("evaluation" in s for s in summaries)

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "ablation_naive"]
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    arms = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # data_label is the toy-resolved option (sample / sample_naive); the arm is the sweep override.
    arm_names = sorted(next(o for o in r.data.tags["overrides"].split() if o.startswith("data=")) for r in arms)
    assert arm_names == ["data=fgrft_5k", "data=naive_cot_5k", "data=naive_cot_5k_structured"]
    for arm in arms:
        (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == arm.info.run_id]
        assert child.data.tags["stage"] == "evaluate" and child.data.params["train_run_id"] == arm.info.run_id
    assert {r.data.params.get("ids_matched") for r in arms} == {"12"}  # all three on the shared ids
