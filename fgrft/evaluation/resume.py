"""What an evaluation's kept completions were generated from, so a re-run reuses them only when
nothing that shapes them changed.

``completions.partial.jsonl`` holds finished completions; ``completions.fingerprint.json`` beside
it records what produced them:

* ``prompts``: a hash of every request's prompt token ids (local backends), or of the messages,
  model name, base_url and cache scope (``inference=openai``);
* ``sampling``: temperature, top_p, max_new_tokens, samples per item and seed;
* ``weights``: the names and sizes of the checkpoint's weight files plus its ``fgrft.json`` (not
  mtimes: a copied checkpoint still resumes), or the hub id and revision, or the API model name.

A re-run whose fingerprint differs refuses, naming what changed; ``resume=false`` sets the old
files aside (renamed with a timestamp, never deleted) and starts over, in a fresh MLflow run in
the same directory.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from fgrft.evaluation.requests import PARTIAL_FILE
from fgrft.records import LINEAGE_FILE
from fgrft.tracking import RUN_ID_FILE

FINGERPRINT_FILE = "completions.fingerprint.json"
SET_ASIDE = (PARTIAL_FILE, FINGERPRINT_FILE, RUN_ID_FILE)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
_PARTS = {"prompts": "the prompts (token ids, or messages/model/base_url for an API)",
          "sampling": "the sampling parameters", "weights": "the model weights"}


class StaleCompletions(RuntimeError):
    """Kept completions were generated from something else than this run asks for."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def weights_identity(model_location: str | None, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Names and sizes of the weight files and fgrft.json of a local checkpoint, else the hub id."""
    path = Path(model_location) if model_location else None
    if path is not None and path.is_dir():
        files = sorted((str(f.relative_to(path)), f.stat().st_size) for f in path.rglob("*")
                       if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        lineage = path / LINEAGE_FILE
        return {"files": files,
                "fgrft.json": hashlib.sha256(lineage.read_bytes()).hexdigest() if lineage.is_file() else None}
    return {"hub_id": model_location, "revision": model_cfg.get("revision")}


def fingerprint(*, prompts: Iterable[Any], sampling: Mapping[str, Any], weights: Mapping[str, Any]) -> dict[str, str]:
    return {"prompts": _digest(list(prompts)), "sampling": _digest(dict(sampling)), "weights": _digest(dict(weights))}


def check_or_record(run_dir: Path, current: Mapping[str, str]) -> None:
    """Record ``current`` for a fresh run directory; refuse kept completions made from anything else."""
    run_dir = Path(run_dir)
    partial, stored_file = run_dir / PARTIAL_FILE, run_dir / FINGERPRINT_FILE
    has_completions = partial.is_file() and partial.stat().st_size > 0
    if has_completions:
        stored = json.loads(stored_file.read_text()) if stored_file.is_file() else None
        if stored is None:
            changed = ["no fingerprint was recorded with them"]
        else:
            changed = [_PARTS.get(k, k) for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
        if changed:
            raise StaleCompletions(
                f"{partial} holds completions that cannot be reused: {', '.join(changed)} changed since they "
                f"were generated. Re-run with resume=false to set them aside (renamed, not deleted) and start "
                f"over, or restore what changed.")
    stored_file.write_text(json.dumps(dict(current), indent=2) + "\n")


def set_aside(run_dir: str | Path, stamp: str | None = None) -> list[Path]:
    """Rename the kept completions, their fingerprint and the MLflow run id of ``run_dir`` aside."""
    run_dir = Path(run_dir)
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for name in SET_ASIDE:
        src = run_dir / name
        if src.exists():
            dst = run_dir / f"{name}.set-aside-{stamp}"
            src.rename(dst)
            moved.append(dst)
    return moved
