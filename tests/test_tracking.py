"""Run directories, MLflow runs per job and per sweep, reattachment, redaction.

These drive the real entrypoint machinery (Hydra app, task wrapper, tracking)
with a trivial job (tests/tracking_app.py) in a fresh working directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_app(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tests.tracking_app", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=180)


def runs(root: Path, experiment: str = "default"):
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs").rglob("mlflow_run_id"))


def test_same_command_reuses_its_directory_and_run(tmp_path):
    for _ in range(2):
        r = run_app(tmp_path, "temperature=t0.7")
        assert r.returncode == 0, r.stderr
    (d,) = run_dirs(tmp_path)
    assert (d / "runs.txt").read_text() == "xx"  # the job ran twice in one directory
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert (d / "mlflow_run_id").read_text() == run.info.run_id
    assert d.is_relative_to(tmp_path / "outputs" / "evaluate" / "default")


def test_different_overrides_get_different_directories_and_explicit_dir_wins(tmp_path):
    assert run_app(tmp_path, "temperature=t0.5").returncode == 0
    assert run_app(tmp_path, "temperature=t0.7").returncode == 0
    assert run_app(tmp_path).returncode == 0
    explicit = tmp_path / "mine"
    assert run_app(tmp_path, "temperature=t0.7", f"hydra.run.dir={explicit}").returncode == 0
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3 and len({d.name for d in dirs}) == 3
    assert (explicit / "mlflow_run_id").is_file()
    assert len(runs(tmp_path)) == 4
    # The run directory keeps its override-derived name (the resume key); the run name is readable.
    assert sorted(d.name.rsplit("-", 1)[0] for d in dirs) == ["default", "temperature-t0.5", "temperature-t0.7"]
    notes = {r.data.tags["mlflow.note.content"] for r in runs(tmp_path)}
    assert f"python -m fgrft.evaluate temperature=t0.7 hydra.run.dir={explicit}" in notes
    assert {r.info.run_name for r in runs(tmp_path)} == {"evaluate smol t0.5 strict", "evaluate smol t0.7 strict"}


def test_multirun_is_a_parent_with_children_and_rerun_reattaches(tmp_path):
    for _ in range(2):
        r = run_app(tmp_path, "-m", "temperature=t0.5,t0.7")
        assert r.returncode == 0, r.stderr
    all_runs = runs(tmp_path)
    parents = [r for r in all_runs if r.data.tags.get("sweep_parent") == "true"]
    assert len(parents) == 1 and len(all_runs) == 3
    parent = parents[0]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    for run in [parent, *children]:
        tags = run.data.tags
        for key in ("stage", "sweep_id", "git_commit", "git_dirty", "overrides", "host"):
            assert tags.get(key), (key, tags)
        assert tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert tags["stage"] == "evaluate"
        assert run.info.status == "FINISHED"
    assert sorted(c.data.metrics["accuracy/overall"] for c in children) == [0.5, 0.7]
    assert sorted(c.data.params["temperature.name"] for c in children) == ["t0.5", "t0.7"]
    # Readable names for the runs table; the description is the command that reproduces the run.
    assert parent.info.run_name == "sweep evaluate default (2 jobs)"
    assert parent.data.tags["mlflow.note.content"] == "python -m fgrft.evaluate -m temperature=t0.5,t0.7"
    assert sorted(c.info.run_name for c in children) == ["evaluate smol t0.5 strict", "evaluate smol t0.7 strict"]
    assert sorted(c.data.tags["mlflow.note.content"] for c in children) == [
        "python -m fgrft.evaluate temperature=t0.5", "python -m fgrft.evaluate temperature=t0.7"]
    # sweep jobs live under one sweep directory; each ran twice there
    sweep_dirs = {d.parent for d in run_dirs(tmp_path)}
    assert len(sweep_dirs) == 1
    assert all((d / "runs.txt").read_text() == "xx" for d in run_dirs(tmp_path))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"metrics.json", "config.yaml"} <= names


def test_a_failed_job_is_closed_as_failed_and_the_sweep_goes_on(tmp_path):
    r = run_app(tmp_path, "-m", "temperature=t0.5,t0.7,greedy", env={"FGRFT_TEST_FAIL_ON": "t0.7"})
    assert "scripted failure" in r.stdout + r.stderr
    all_runs = runs(tmp_path)
    status = {r.data.tags.get("overrides"): r.info.status for r in all_runs if "sweep_parent" not in r.data.tags}
    assert status == {"temperature=t0.5": "FINISHED", "temperature=t0.7": "FAILED",
                      "temperature=greedy": "FINISHED"}
    (parent,) = [r for r in all_runs if "sweep_parent" in r.data.tags]
    assert parent.info.status == "FAILED"
    assert r.returncode != 0  # a sweep with a failed job does not look green to scripts


def test_a_failed_single_job_exits_non_zero_and_is_marked_failed(tmp_path):
    r = run_app(tmp_path, "temperature=t0.7", env={"FGRFT_TEST_FAIL_ON": "t0.7"})
    assert r.returncode != 0
    (run,) = runs(tmp_path)
    assert run.info.status == "FAILED"


def test_secrets_never_reach_runs_logs_or_files(tmp_path):
    secrets = {
        "OPENAI_API_KEY": "sk-fgrft-test-0123456789abcdef",
        "HF_TOKEN": "hf_fgrfttesttoken0123456789",
        "SOME_SERVICE_SECRET": "s3cr3t-fgrft-value-42",
        "MY_ENDPOINT_CREDENTIAL": "cred-fgrft-named-by-api-key-env",  # caught only via api_key_env
    }
    env = {**secrets, "FGRFT_TEST_ECHO_ENV": ",".join(secrets)}
    r = run_app(tmp_path, "inference=openai", "inference.model=m", "inference.api_key_env=MY_ENDPOINT_CREDENTIAL",
                env=env)
    assert r.returncode == 0, r.stderr
    assert "env HF_TOKEN=***" in (r.stdout + r.stderr)  # the job did try to log them
    leaks = []
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [(str(path), name) for name, value in secrets.items() if value.encode() in data]
    output = r.stdout + r.stderr
    leaks += [("<stdout/stderr>", name) for name, value in secrets.items() if value in output]
    assert not leaks
    (run,) = runs(tmp_path)
    assert run.data.params["inference.api_key_env"] == "MY_ENDPOINT_CREDENTIAL"  # the name, not the value


def test_subprocesses_attach_to_the_jobs_run(tmp_path):
    from fgrft.tracking import ENV_RUN_ID

    assert run_app(tmp_path).returncode == 0
    (run,) = runs(tmp_path)
    code = ("import mlflow\nfrom fgrft.tracking import attach_run\n"
            "with attach_run() as rid:\n    mlflow.log_metric('from_child', 1.0)\n")
    env = {**os.environ, ENV_RUN_ID: run.info.run_id,
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, cwd=tmp_path)
    (run,) = runs(tmp_path)
    assert run.data.metrics["from_child"] == 1.0


def test_a_sweep_through_the_submitit_launcher_runs_jobs_as_subprocesses(tmp_path):
    r = run_app(tmp_path, "-m", "temperature=t0.5,t0.7", "hydra/launcher=local")
    assert r.returncode == 0, r.stderr[-3000:]
    all_runs = runs(tmp_path)
    (parent,) = [r for r in all_runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["temperature.name"] for c in children) == ["t0.5", "t0.7"]
    assert all(c.info.status == "FINISHED" for c in children)
    # submitit ran each job in its own process and left its logs in the sweep directory
    assert list((tmp_path / "outputs").rglob(".submitit/*/*_log.out"))
