"""Batch mode on the embedded model: the Files and Batches calls the batcher makes, served by
vLLM's own batch runner (``vllm run_batch``) on the same file format, offline.

    api = LocalBatchAPI(model_dir, workdir=cache / "local_batches", log_path=run_dir / "batch.log")
    engine.batcher.use_client(endpoint.lane_key, api)

Each created batch is one ``python -m vllm.entrypoints.openai.run_batch`` process started with
the embedded server's engine settings (:func:`fgrft.models.server.server_command`'s flags:
no chunked prefill with seeded requests, the guidance structured-output backend, the server's
generation config, the served name ``smol`` that the request bodies carry). It loads the model
for every batch and writes its output at the end; that is the price of the toy path.

State lives in ``workdir`` (input, output, one JSON file per batch), so a re-run finds the
batches of an earlier process through ``batches.list``; one whose runner died with that
process (and left no output) reads as ``expired``, and its rows are submitted again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fgrft.models.server import (KV_CACHE_GIB, MAX_MODEL_LEN, SERVED_NAME, STRUCTURED_OUTPUTS,
                                   _die_with_parent, engine_flags)


def runner_command(model_dir: str | Path, input_path: Path, output_path: Path) -> list[str]:
    from fgrft.models.vllm_settings import vllm_engine_kwargs

    kwargs = vllm_engine_kwargs(model_dir, cpu=True, max_model_len=MAX_MODEL_LEN,
                                kv_cache_gib=KV_CACHE_GIB)
    return [sys.executable, "-m", "vllm.entrypoints.openai.run_batch",
            "-i", str(input_path), "-o", str(output_path),
            "--model", str(model_dir), "--served-model-name", SERVED_NAME,
            *engine_flags(kwargs),
            "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS)]


class LocalBatchAPI:
    """``files.create/content`` and ``batches.create/retrieve/list/cancel`` (async, returning
    objects with the attributes of the SDK's) over local ``vllm run_batch`` processes."""

    def __init__(self, model_dir: str | Path, *, workdir: str | Path, log_path: str | Path):
        self.model_dir = Path(model_dir)
        self.workdir = Path(workdir)
        self.log_path = Path(log_path)
        (self.workdir / "files").mkdir(parents=True, exist_ok=True)
        (self.workdir / "batches").mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen] = {}
        self.files = SimpleNamespace(create=self._file_create, content=self._file_content)
        self.batches = SimpleNamespace(create=self._create, retrieve=self._retrieve,
                                       list=self._list, cancel=self._cancel)

    # -- files --------------------------------------------------------------------------
    def _file(self, file_id: str) -> Path:
        return self.workdir / "files" / file_id

    async def _file_create(self, *, file: tuple[str, bytes], purpose: str) -> Any:
        file_id = f"file-local-{uuid.uuid4().hex[:16]}"
        self._file(file_id).write_bytes(file[1])
        return SimpleNamespace(id=file_id, purpose=purpose)

    async def _file_content(self, file_id: str) -> Any:
        return SimpleNamespace(text=self._file(file_id).read_text(encoding="utf-8"))

    # -- batches ------------------------------------------------------------------------
    def _meta_path(self, batch_id: str) -> Path:
        return self.workdir / "batches" / f"{batch_id}.json"

    def _save(self, meta: dict) -> None:
        tmp = self._meta_path(meta["id"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(self._meta_path(meta["id"]))

    async def _create(self, *, input_file_id: str, endpoint: str, completion_window: str,
                      metadata: dict | None = None) -> Any:
        batch_id = f"batch-local-{uuid.uuid4().hex[:16]}"
        output = self.workdir / "batches" / f"{batch_id}.output.jsonl"
        meta = {"id": batch_id, "input_file_id": input_file_id, "endpoint": endpoint,
                "metadata": dict(metadata or {}), "created_at": int(time.time()),
                "status": "in_progress", "output_file_id": None, "errors": None,
                "total": len(self._file(input_file_id).read_bytes().splitlines())}
        self._save(meta)
        from fgrft.models.vllm_settings import cpu_engine_env

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._procs[batch_id] = subprocess.Popen(
                runner_command(self.model_dir, self._file(input_file_id), output),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **cpu_engine_env(cpu=True)}, start_new_session=True,
                preexec_fn=_die_with_parent)
        return self._view(meta)

    def _refresh(self, meta: dict) -> dict:
        if meta["status"] != "in_progress":
            return meta
        proc = self._procs.get(meta["id"])
        output = self.workdir / "batches" / f"{meta['id']}.output.jsonl"
        if proc is not None and proc.poll() is None:
            return meta
        if proc is not None and proc.returncode == 0 and output.exists():
            file_id = f"file-local-{uuid.uuid4().hex[:16]}"
            output.replace(self._file(file_id))
            meta.update(status="completed", output_file_id=file_id)
        elif proc is not None:
            meta.update(status="failed", errors=[{
                "code": "run_batch_failed", "line": None, "param": None,
                "message": f"vllm run_batch exited with status {proc.returncode}; see "
                           f"{self.log_path}"}])
        else:  # its runner belonged to a process that is gone
            meta.update(status="expired")
        self._save(meta)
        return meta

    def _load(self, batch_id: str) -> dict:
        return json.loads(self._meta_path(batch_id).read_text())

    def _view(self, meta: dict) -> Any:
        meta = self._refresh(meta)
        errors = None
        if meta["errors"]:
            errors = SimpleNamespace(data=[SimpleNamespace(**e) for e in meta["errors"]])
        return SimpleNamespace(
            id=meta["id"], status=meta["status"], metadata=meta["metadata"],
            created_at=meta["created_at"], output_file_id=meta["output_file_id"],
            error_file_id=None, errors=errors, input_file_id=meta["input_file_id"],
            request_counts=SimpleNamespace(total=meta["total"], failed=0,
                                           completed=meta["total"] if meta["status"] == "completed" else 0))

    async def _retrieve(self, batch_id: str) -> Any:
        return self._view(self._load(batch_id))

    def _list(self, *, limit: int = 20):
        metas = sorted((json.loads(p.read_text()) for p in (self.workdir / "batches").glob("*.json")),
                       key=lambda m: m["created_at"], reverse=True)

        async def pages():
            for meta in metas:
                yield self._view(meta)
        return pages()

    async def _cancel(self, batch_id: str) -> Any:
        meta = self._load(batch_id)
        proc = self._procs.get(batch_id)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if meta["status"] == "in_progress":
            meta["status"] = "cancelled"
            self._save(meta)
        return self._view(meta)

    async def close(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
