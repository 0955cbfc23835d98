"""User errors at the app layer: one line on stderr, exit 1, no traceback, no MLflow run left.

Real entrypoints (and the tracking test app on the same machinery) in subprocesses, in a
fresh working directory whose store is its own.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_tracking import run_app, runs

REPO = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_evaluate_refuses_a_missing_replay_file_in_one_line_before_a_run_opens(tmp_path):
    missing = tmp_path / "missing.jsonl"
    r = subprocess.run([sys.executable, "-m", "fgrft.evaluate", "inference=replay", f"inference.path={missing}"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [f"fgrft.evaluate: RecordError: {missing}: replay file does not exist"]
    assert not (tmp_path / "mlflow.db").exists()  # the check ran before the store was opened


def test_evaluate_refuses_a_missing_model_path_in_one_line_before_a_run_opens(tmp_path):
    missing = tmp_path / "no_model"
    r = subprocess.run([sys.executable, "-m", "fgrft.evaluate", f"model.path={missing}"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"fgrft.evaluate: ModelSpecError: model.path '{missing}' does not exist (resolved to {missing})"]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_user_error_inside_the_job_is_one_line_and_its_new_run_is_deleted(tmp_path):
    r = run_app(tmp_path, "temperature=t0.7", env={"FGRFT_TEST_USER_ERROR_ON": "t0.7", "HYDRA_FULL_ERROR": "0"})
    assert r.returncode == 1, r.stderr
    line = "fgrft.evaluate: ConfigError: temperature.temperature: scripted user error for temperature=t0.7"
    assert "Traceback" not in r.stderr and r.stderr.count(line) == 1
    assert r.stderr.strip().splitlines()[-1] == line
    assert runs(tmp_path) == []  # the run opened for the job is gone, and so is its id file
    assert not list((tmp_path / "outputs").rglob("mlflow_run_id"))


def test_a_user_error_after_the_job_logged_results_keeps_its_run_as_failed(tmp_path):
    r = run_app(tmp_path, "temperature=t0.7",
                env={"FGRFT_TEST_USER_ERROR_AFTER_WORK_ON": "t0.7", "HYDRA_FULL_ERROR": "0"})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "fgrft.evaluate: ConfigError: temperature.temperature: scripted user error after work for temperature=t0.7")
    [run] = runs(tmp_path)
    assert run.info.status == "FAILED" and run.data.metrics["accuracy/overall"] == 0.7
    assert len(list((tmp_path / "outputs").rglob("mlflow_run_id"))) == 1


def test_every_job_of_a_sweep_that_stops_on_a_user_error_gets_its_line(tmp_path):
    r = run_app(tmp_path, "-m", "temperature=t0.5,t0.7,greedy",
                env={"FGRFT_TEST_USER_ERROR_ON": "temperature=t", "HYDRA_FULL_ERROR": "0"})
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("fgrft.evaluate: ConfigError")]
    assert [line.rsplit(" for ", 1)[1] for line in lines] == ["temperature=t0.5", "temperature=t0.7"]
    assert "Traceback" not in r.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path):
    r = run_app(tmp_path, "temperature=t0.7", env={"FGRFT_TEST_USER_ERROR_ON": "t0.7", "HYDRA_FULL_ERROR": "1"})
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "ConfigError: temperature.temperature: scripted user error" in r.stderr
