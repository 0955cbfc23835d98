"""`inference.data_parallel_size` > 1: one engine process per rank over every N-th request, each on its own
GPUs, parts merged into the one completion sink (kept across a failed engine). The engine is a scripted
stand-in here (tests/dp_engine_stub.py); the real vLLM engine is the same command with the same spec."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fgrft.evaluation import backends
from fgrft.evaluation.requests import Completion, CompletionSink

REPO = Path(__file__).resolve().parent.parent


def _spec(n: int) -> dict:
    return {"model_path": "m", "engine": {}, "sampling": {}, "chunk_size": 8, "sink": "",
            "requests": [{"key": f"q{i}::0", "messages": [], "seed": i} for i in range(n)]}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_each_rank_gets_every_nth_request_and_the_parts_merge_into_one_sink(tmp_path):
    sink = CompletionSink.in_dir(tmp_path)
    backends.run_data_parallel(_spec(7), sink, tmp_path, ["0,1", "2,3"], _env(), module="tests.dp_engine_stub")
    done = sink.done()
    assert sorted(done) == sorted(f"q{i}::0" for i in range(7))
    seen = {k: json.loads(c.text) for k, c in done.items()}
    by_rank = {0: [f"q{i}::0" for i in (0, 2, 4, 6)], 1: [f"q{i}::0" for i in (1, 3, 5)]}
    for rank, keys in by_rank.items():
        assert {seen[k]["devices"] for k in keys} == {("0,1", "2,3")[rank]}
        assert len({seen[k]["pid"] for k in keys}) == 1
    assert seen["q0::0"]["pid"] != seen["q1::0"]["pid"]  # two engine processes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["completions.partial.jsonl"]  # parts and specs gone


def test_a_failed_rank_keeps_what_finished_and_a_rerun_does_only_the_rest(tmp_path):
    sink = CompletionSink.in_dir(tmp_path)
    with pytest.raises(RuntimeError, match=r"engine\(s\) \[1\] failed"):
        backends.run_data_parallel(_spec(6), sink, tmp_path, [None, None], _env(STUB_FAIL_DP1="1"),
                                   module="tests.dp_engine_stub")
    first = sink.done()
    assert set(first) == {"q0::0", "q2::0", "q4::0", "q1::0"}  # rank 0 all, rank 1 its first
    backends.run_data_parallel(_spec(6), sink, tmp_path, [None, None], _env(), module="tests.dp_engine_stub")
    second = sink.done()
    assert len(second) == 6 and all(second[k].text == c.text for k, c in first.items())  # nothing redone


def test_a_crashed_runs_parts_count_as_done(tmp_path):
    sink = CompletionSink.in_dir(tmp_path)
    CompletionSink(backends.part_path(sink, 1)).append(
        [Completion(key="q3::0", text="kept", finish_reason="stop", output_tokens=1,
                             prompt_token_ids_hash="x")])
    assert backends.merge_parts(sink) == {"q3::0"}
    assert not backends.part_path(sink, 1).exists() and sink.done()["q3::0"].text == "kept"


def test_gpu_groups_follow_visible_devices_and_tensor_parallel(monkeypatch):
    import fgrft.models.vllm_settings as vllm_settings

    monkeypatch.setattr(vllm_settings, "cuda_available", lambda: True)
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert backends.device_groups(2, 2, env) == ["4,5", "6,7"]
    assert backends.device_groups(4, 1, env) == ["4", "5", "6", "7"]
    with pytest.raises(ValueError, match="data_parallel_size=4 x inference.tensor_parallel_size=2 needs 8 GPUs"):
        backends.device_groups(4, 2, env)
    monkeypatch.setattr(vllm_settings, "cuda_available", lambda: False)
    assert backends.device_groups(2, 1, env) == [None, None]


def test_the_engine_is_never_asked_for_data_parallelism(tmp_path):
    from omegaconf import OmegaConf

    from fgrft.evaluation.backends.vllm import engine_kwargs

    inference = OmegaConf.create({"tensor_parallel_size": 1, "data_parallel_size": 4, "enforce_eager": None,
                                  "dtype": "auto", "max_model_len": 512, "gpu_memory_utilization": None})
    assert "data_parallel_size" not in engine_kwargs(str(tmp_path), inference)
