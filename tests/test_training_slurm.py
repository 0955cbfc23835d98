"""Multi-node training under SLURM without SLURM: each node's plan from SLURM's variables, the
rescaled accumulation, mismatches named before any model loads, the node markers, the launcher
plugin. The two-node training run itself is simulated in test_training_launch.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from fgrft.config import ConfigError
from fgrft.training import slurm
from fgrft.training.launch import deepspeed_config

from .test_training_job import _compose, _env

JOB = {"SLURM_JOB_ID": "73512", "SLURM_JOB_NODELIST": "gpu-a[07-08],gpu-b3", "SLURM_JOB_NUM_NODES": "3",
       "SLURM_NTASKS": "3"}


def _trainer(*overrides: str) -> dict:
    return OmegaConf.to_container(_compose(["trainer=zero3_8gpu", *overrides]).trainer, resolve=True)


@pytest.fixture
def slurm_env(monkeypatch):
    for var in (*slurm.REQUIRED_VARS, "SLURM_NTASKS", "SLURM_PROCID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)

    def set_env(node: int, **changes: str | None) -> None:
        for k, v in {**JOB, "SLURM_NODEID": str(node), "SLURM_PROCID": str(node), **changes}.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
    return set_env


# --- global batch ------------------------------------------------------------------------

@pytest.mark.parametrize(("machines", "accum"), [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_thesis_preset_keeps_the_global_batch_at_128_on_any_number_of_machines(machines, accum):
    t = _trainer(f"trainer.num_machines={machines}")
    assert t["grad_accum"] == accum
    assert deepspeed_config(t, bf16=True)["train_batch_size"] == 128


def test_cfg_job_shows_the_rescaled_accumulation():
    cmd = [sys.executable, "-m", "fgrft.train", "trainer=zero3_8gpu", "trainer.num_machines=2", "--cfg", "job"]
    raw = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    resolved = subprocess.run([*cmd, "--resolve"], env=_env(), capture_output=True, text=True, timeout=120)
    assert raw.returncode == resolved.returncode == 0, raw.stderr + resolved.stderr
    assert yaml_trainer(raw.stdout)["grad_accum"].startswith("${fgrft_grad_accum:${.global_batch_size}")
    assert yaml_trainer(resolved.stdout)["grad_accum"] == 4


def yaml_trainer(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)["trainer"]


def test_a_layout_that_cannot_keep_the_global_batch_fails_naming_the_keys():
    with pytest.raises(Exception, match=r"trainer.global_batch_size=128 .* 2 x 8 x 3 = 48"):
        _trainer("trainer.num_machines=3")


def test_an_explicit_accumulation_that_breaks_the_global_batch_fails_before_any_model_loads():
    from fgrft.training.job import _check_trainer

    cfg = _compose(["trainer=zero3_8gpu", "trainer.grad_accum=16", "trainer.main_process_ip=h"])
    with pytest.raises(ConfigError, match="trainer.grad_accum=16 .* not trainer.global_batch_size=128"):
        _check_trainer(cfg.trainer)
    _check_trainer(_compose(["trainer=zero3_8gpu", "trainer.grad_accum=16", "trainer.global_batch_size=null"]).trainer)
    with pytest.raises(Exception, match="global_batch_size=null leaves trainer.grad_accum to you"):
        _trainer("trainer.global_batch_size=null")


# --- a node's plan -----------------------------------------------------------------------

def test_each_node_finds_its_rank_the_main_host_and_the_port(slurm_env):
    t = _trainer("trainer.num_machines=2", "trainer.num_processes=4")
    plans = []
    for node in (0, 1):
        slurm_env(node, SLURM_JOB_NODELIST="gpu-a[07-08]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
        plans.append(slurm.node_plan(t))
    assert [p.machine_rank for p in plans] == [0, 1] and [p.is_main for p in plans] == [True, False]
    for p in plans:
        assert p.hostnames == ["gpu-a07", "gpu-a08"] and p.main_process_ip == "gpu-a07"
        assert p.main_process_port == 29500 + 512 and p.world_size == 8 and p.job_id == "73512"
    assert t["grad_accum"] == 8  # 128 / (2 x 4 x 2)


def test_node_list_with_ranges_and_groups_is_expanded(slurm_env):
    slurm_env(2)
    plan = slurm.node_plan(_trainer("trainer.num_machines=3", "trainer.num_processes=1", "trainer.global_batch_size=null", "trainer.grad_accum=1"))
    assert plan.hostnames == ["gpu-a07", "gpu-a08", "gpu-b3"] and plan.machine_rank == 2


@pytest.mark.parametrize(("changes", "named"), [
    ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST"),
    ({"SLURM_JOB_ID": None, "SLURM_NODEID": None}, "SLURM_JOB_ID, SLURM_NODEID"),
    ({"SLURM_JOB_NUM_NODES": "2"}, "SLURM_JOB_NUM_NODES=2 but trainer.num_machines=3"),
    ({"SLURM_NTASKS": "6"}, "SLURM_NTASKS=6"),
    ({"SLURM_JOB_NODELIST": "gpu-a[07-08]"}, "SLURM_JOB_NODELIST='gpu-a\\[07-08\\]' names 2 hosts"),
    ({"SLURM_NODEID": "3"}, "SLURM_NODEID=3"),
])
def test_a_missing_or_mismatched_variable_is_named(slurm_env, changes, named):
    slurm_env(1, **changes)
    with pytest.raises(ConfigError, match=named):
        slurm.node_plan(_trainer("trainer.num_machines=3", "trainer.num_processes=1",
                                 "trainer.global_batch_size=null", "trainer.grad_accum=1"))


def test_plan_command_prints_a_node_plan_from_given_variables():
    env = {**_env(), **JOB, "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2",
           "SLURM_NODEID": "1"}
    cmd = [sys.executable, "-m", "fgrft.training.slurm", "plan", "trainer=zero3_8gpu", "trainer.num_machines=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["role"].startswith("follower") and plan["machine_rank"] == 1 and plan["world_size"] == 16
    assert (plan["grad_accum"], plan["global_batch_size"]) == (4, 128)
    acc = plan["accelerate"]
    assert (acc["machine_rank"], acc["num_machines"], acc["num_processes"]) == (1, 2, 16)
    assert (acc["main_process_ip"], acc["main_process_port"]) == ("gpu-a07", 30012)
    assert plan["deepspeed"]["train_batch_size"] == 128
    bad = subprocess.run(cmd, env={**env, "SLURM_JOB_NUM_NODES": "3"}, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "SLURM_JOB_NUM_NODES=3 but trainer.num_machines=2" in bad.stderr


# --- node 0 and the followers ------------------------------------------------------------

def test_node0_fills_the_rendezvous_keys_and_writes_its_marker(slurm_env, tmp_path):
    slurm_env(0, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    cfg = _compose(["trainer=zero3_8gpu", "trainer.num_machines=2"])
    plan = slurm.start_main_node(cfg, tmp_path)
    assert (cfg.trainer.machine_rank, cfg.trainer.main_process_ip, cfg.trainer.main_process_port) == (0, "n1", 30012)
    marker = json.loads((tmp_path / "nodes" / "main.json").read_text())
    assert marker["job_id"] == "73512" and marker["main_process_port"] == plan.main_process_port
    # A task that is not node 0 refuses to run the job itself.
    slurm_env(1, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    with pytest.raises(ConfigError, match="only node 0 runs the training job"):
        slurm.start_main_node(_compose(["trainer=zero3_8gpu", "trainer.num_machines=2"]), tmp_path)


def test_one_machine_and_machines_started_by_hand_need_no_slurm(slurm_env, tmp_path):
    slurm_env(0, SLURM_JOB_ID=None)
    assert slurm.start_main_node(_compose(["trainer=zero3_8gpu", "trainer.num_machines=2"]), tmp_path) is None
    slurm_env(0)
    assert slurm.start_main_node(_compose(["trainer=zero3_8gpu"]), tmp_path) is None
    assert not (tmp_path / "nodes").exists()


def test_a_follower_that_cannot_see_node0s_marker_fails_saying_so(slurm_env, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "POLL_S", 0.05)
    slurm_env(1, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    t = _trainer("trainer.num_machines=2")
    with pytest.raises(RuntimeError, match="node 0's marker .* is not visible .* filesystem shared with node 0"):
        slurm.follow_main_node(tmp_path, t, wait_s=0.2)
    # A marker left by an earlier SLURM job, or by this job before SLURM requeued it, is not this attempt's.
    (tmp_path / "nodes").mkdir()
    for earlier in ("111", "73512"):
        (tmp_path / "nodes" / "main.json").write_text(json.dumps({"job_id": earlier, "main_process_ip": "n1",
                                                                  "main_process_port": 30012}))
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        with pytest.raises(RuntimeError, match=r"is not visible"):
            slurm.follow_main_node(tmp_path, t, wait_s=0.2)


def test_a_follower_acknowledges_and_stops_when_node0_ends_without_launching(slurm_env, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "POLL_S", 0.05)
    slurm_env(0, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    plan0 = slurm.start_main_node(_compose(["trainer=zero3_8gpu", "trainer.num_machines=2"]), tmp_path)
    with pytest.raises(RuntimeError, match=r"node\(s\) \[1\] did not acknowledge"):
        slurm.await_followers(tmp_path, plan0, wait_s=0.2)
    slurm.mark_main_done(tmp_path, plan0.job_id)  # e.g. node 0's prepare() rejected the data
    slurm_env(1, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    with pytest.raises(RuntimeError, match="node 0's job ended before launching"):
        slurm.follow_main_node(tmp_path, _trainer("trainer.num_machines=2"), wait_s=5)
    assert json.loads((tmp_path / "nodes" / "node1.json").read_text())["machine_rank"] == 1
    slurm.await_followers(tmp_path, plan0, wait_s=0.2)  # node 1's acknowledgement is there now


# --- the launcher ------------------------------------------------------------------------

def test_slurm_launcher_is_fgrfts_and_asks_for_one_node_per_machine():
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    from fgrft.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "trainer=zero3_8gpu", "trainer.num_machines=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 1, 8)
    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert launcher._target_ in found


def test_launcher_refuses_nodes_set_apart_from_num_machines():
    from hydra_plugins.fgrft_launcher.launcher import _check_nodes

    cfg = OmegaConf.create({"trainer": {"num_machines": 2}})
    _check_nodes({"nodes": 2, "tasks_per_node": 1}, cfg, [["trainer=zero3_8gpu"]])
    with pytest.raises(ValueError, match="hydra.launcher.nodes=3 but trainer.num_machines=2"):
        _check_nodes({"nodes": 3, "tasks_per_node": 1}, cfg, [[]])
    with pytest.raises(ValueError, match="trainer.num_machines=4"):
        _check_nodes({"nodes": 2, "tasks_per_node": 1}, cfg, [[], ["trainer.num_machines=4"]])
    with pytest.raises(ValueError, match="tasks_per_node=8"):
        _check_nodes({"nodes": 2, "tasks_per_node": 8}, cfg, [[]])
    _check_nodes({"nodes": 1}, OmegaConf.create({"model": {}}), [[]])  # evaluate: no trainer, no check


def test_launcher_runs_the_job_on_node0_only_and_sends_the_others_to_its_run_directory(slurm_env, tmp_path,
                                                                                    monkeypatch):
    """The launcher's callable as SLURM starts it on each node (submitit's SLURM job environment)."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext, RunMode

    from fgrft.config import CONF_DIR, register_resolvers

    register_resolvers()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    overrides = ["hydra/launcher=slurm", "trainer=zero3_8gpu", "trainer.num_machines=2",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.seed=42,43"]
    cfg = loader.load_configuration("train", overrides, RunMode.MULTIRUN)
    ran: list[str] = []

    def task(task_cfg):
        ran.append(HydraConfig.get().runtime.output_dir)
        assert task_cfg.trainer.num_machines == 2

    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(cfg)), task_function=task, config=cfg)
    followed: list[tuple] = []
    monkeypatch.setattr(slurm, "follow_main_node", lambda run_dir, trainer, wait_s: followed.append(
        (run_dir, trainer["num_machines"], trainer["grad_accum"], wait_s)))
    job = ["trainer=zero3_8gpu", "trainer.num_machines=2", "trainer.seed=43"]  # as the sweeper passes them

    slurm_env(1, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    assert launcher(job, "hydra.sweep.dir", 0, "j0", Singleton.get_state()) is None
    assert not ran and len(followed) == 1
    follower_dir, machines, accum, wait_s = followed[0]
    assert (machines, accum, wait_s) == (2, 4, 900)
    assert not follower_dir.exists()  # a follower writes nothing of Hydra's (no job log, no .hydra/)

    slurm_env(0, SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2")
    result = launcher(job, "hydra.sweep.dir", 0, "j0", Singleton.get_state())
    assert result.status.name == "COMPLETED" and len(followed) == 1
    assert ran == [str(follower_dir)]  # node 0's job ran in the very directory the follower waits in
    assert (follower_dir / ".hydra").is_dir()
    assert json.loads((follower_dir / "nodes" / "main_done.json").read_text()) == {"job_id": "73512"}
