"""Evaluation resume: kept completions are reused only when what made them is unchanged."""
import json
import os
import shutil

import pytest

from fgrft.evaluation.resume import (
    FINGERPRINT_FILE,
    StaleCompletions,
    check_or_record,
    fingerprint,
    set_aside,
    weights_identity,
)
from fgrft.evaluation.requests import PARTIAL_FILE

SAMPLING = {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 64, "n_samples": 1, "seed": 42}


def checkpoint(directory, weights=b"\0" * 100, lineage='{"data_hash": "d1"}'):
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "config.json").write_text("{}")
    if lineage is not None:
        (directory / "fgrft.json").write_text(lineage)
    return directory


def test_weights_identity_follows_names_sizes_and_lineage_not_mtimes(tmp_path):
    a = checkpoint(tmp_path / "a")
    copied = tmp_path / "copy"
    shutil.copytree(a, copied)
    os.utime(copied / "model.safetensors", (1, 1))
    assert weights_identity(str(a), {}) == weights_identity(str(copied), {})
    assert weights_identity(str(a), {}) != weights_identity(str(checkpoint(tmp_path / "b", b"\0" * 101)), {})
    other_data = checkpoint(tmp_path / "c", lineage='{"data_hash": "d2"}')
    assert weights_identity(str(a), {}) != weights_identity(str(other_data), {})
    assert weights_identity("org/model", {"revision": "abc"}) == {"hub_id": "org/model", "revision": "abc"}


def test_resume_refuses_what_changed_and_accepts_what_did_not(tmp_path):
    first = fingerprint(prompts=[[1, 2, 3]], sampling=SAMPLING, weights={"files": [["m", 1]]})
    check_or_record(tmp_path, first)
    (tmp_path / PARTIAL_FILE).write_text('{"key": "q1#0"}\n')
    check_or_record(tmp_path, dict(first))  # the same run again: reused
    changed = fingerprint(prompts=[[1, 2, 4]], sampling={**SAMPLING, "top_p": 1.0}, weights={"files": [["m", 1]]})
    with pytest.raises(StaleCompletions) as e:
        check_or_record(tmp_path, changed)
    message = str(e.value)
    assert "prompts" in message and "sampling" in message and "weights" not in message
    assert "resume=false" in message and PARTIAL_FILE in message
    assert json.loads((tmp_path / FINGERPRINT_FILE).read_text()) == first  # untouched by the refusal


def test_completions_kept_without_a_fingerprint_are_not_reused(tmp_path):
    (tmp_path / PARTIAL_FILE).write_text('{"key": "q1#0"}\n')
    with pytest.raises(StaleCompletions, match="no fingerprint"):
        check_or_record(tmp_path, fingerprint(prompts=[], sampling=SAMPLING, weights={}))


def test_set_aside_renames_and_never_deletes(tmp_path):
    for name, text in ((PARTIAL_FILE, "kept\n"), (FINGERPRINT_FILE, "{}"), ("mlflow_run_id", "abc")):
        (tmp_path / name).write_text(text)
    moved = set_aside(tmp_path, stamp="T1")
    assert sorted(p.name for p in moved) == sorted(f"{n}.set-aside-T1" for n in
                                                   (PARTIAL_FILE, FINGERPRINT_FILE, "mlflow_run_id"))
    assert (tmp_path / f"{PARTIAL_FILE}.set-aside-T1").read_text() == "kept\n"
    assert not (tmp_path / PARTIAL_FILE).exists()
