"""The one redaction rule of fgrft.secrets, seen where a secret can leak: a log line, an error
message, an MLflow param and a run file all mask it the same way."""
from __future__ import annotations

import asyncio
import logging

import mlflow
import pytest
from omegaconf import OmegaConf

import fgrft.secrets
from fgrft.llm import EndpointSettings, Engine, FatalAPIError, RetryPolicy
from fgrft.secrets import MASK, RedactingFilter, redact, register_secret_envs
from tests.support.fault_server import error
from fgrft.tracking import JobInfo, TrackedRun, _write_config

# Not key-shaped, and its variable's name has no secret suffix: only api_key_env names it.
CREDENTIAL_ENV = "MY_ENDPOINT_CREDENTIAL"
CREDENTIAL = "plain-credential-0123456789"


@pytest.fixture
def named_credential(monkeypatch):
    monkeypatch.setattr(fgrft.secrets, "_named_secret_envs", set())
    monkeypatch.setenv(CREDENTIAL_ENV, CREDENTIAL)
    cfg = OmegaConf.create({"generator": {"api_key_env": CREDENTIAL_ENV, "model": "m"},
                            "note": f"pasted {CREDENTIAL} here"})
    register_secret_envs(cfg)
    return cfg


def test_one_secret_is_masked_alike_in_a_log_line_an_error_an_mlflow_param_and_a_run_file(
        named_credential, fault_server, tmp_path):
    masked = f"pasted {MASK} here"
    # A log line through the filter every handler carries.
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "pasted %s here", (CREDENTIAL,), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == masked

    # An error message: the server echoes the key it was sent in its 401 body.
    fault_server.push(error(401, echo_auth=True))

    async def call():
        async with Engine(retry=RetryPolicy(max_retries=0)) as engine:
            ep = engine.endpoint(EndpointSettings(base_url=fault_server.base_url, model="m", name="generator",
                                                api_key_env=CREDENTIAL_ENV, timeout_s=2.0))
            return await ep.call([{"role": "user", "content": "hi"}])

    with pytest.raises(FatalAPIError) as info:
        asyncio.run(call())
    assert fault_server.requests[-1].headers["authorization"] == f"Bearer {CREDENTIAL}"
    assert f"Incorrect API key provided: {MASK}" in str(info.value) and CREDENTIAL not in str(info.value)

    # An MLflow param.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("secrets", artifact_location=(tmp_path / "a").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            TrackedRun(run.info.run_id, JobInfo("evaluate", tmp_path, None)).log_params({"note": named_credential.note})
        params = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri(previous)
    assert params["note"] == masked

    # A run file: the config written beside the outputs.
    _write_config(named_credential, tmp_path)
    written = OmegaConf.load(tmp_path / "config.yaml")
    assert written.note == masked and written.generator.api_key_env == CREDENTIAL_ENV


def test_the_rule_masks_suffixed_variables_and_key_shapes_but_not_short_values(monkeypatch):
    monkeypatch.setattr(fgrft.secrets, "_named_secret_envs", set())
    monkeypatch.setenv("SOME_PROVIDER_KEY", "value-of-a-key-42")
    monkeypatch.setenv("HF_TOKEN", "hftoken123")
    monkeypatch.setenv("A_SECRET", "short")  # under 6 characters: a placeholder, not a secret
    monkeypatch.setenv("NOT_A_SECRET_NAME", "visible-value-123")
    text = ("value-of-a-key-42 hftoken123 short visible-value-123 sk-proj-abcdef123456 "
            "Authorization: Bearer tok_987654321")
    assert redact(text) == f"{MASK} {MASK} short visible-value-123 {MASK} Authorization: Bearer {MASK}"
    assert redact("known EMPTY 123456", ["EMPTY", "123456"]) == f"known EMPTY {MASK}"
