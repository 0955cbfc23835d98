"""The fault server with OpenAI's Files and Batches endpoints, and scripted batch behaviour.

    with BatchServer(responder=StepResponder()) as server:
        server.script(BatchScript(delay_s=0.2), BatchScript(expire_after=3))
        ...   # point an OpenAI client (or the engine's mode=batch) at server.base_url
        server.rows            # Counter: custom_id -> times submitted in a batch
        server.creates         # batches created

Routes (beside everything :class:`FaultServer` serves): ``POST /v1/files`` (multipart upload,
``purpose=batch``), ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches``
(newest first, ``limit``/``after`` pages), ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``. Each row of a batch is answered by the server's responder,
exactly as the same request sent to ``/v1/chat/completions`` would be.

Each created batch takes the next :class:`BatchScript` (then :attr:`BatchServer.default`):
how long it runs before it ends, which rows fail, whether it expires part-way, fails
validation or is refused for the enqueued-token limit, how long cancelling takes. The state is
worked out from the clock whenever a batch is read, like a provider's: ``validating`` ->
``in_progress`` -> ``finalizing`` -> ``completed`` (or ``failed``, ``expired``,
``cancelling`` -> ``cancelled``). Output and error files follow the provider's line format:
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``.

``on_create`` (a callable taking the batch dict) runs after a batch is created and before the
answer is sent, so a test can kill the client exactly between create and its bookkeeping.

Standalone: ``python -m tests.support.batch_server --step-responder`` prints ``READY <url>``.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any, Callable

from tests.support.fault_server import FaultServer, Request


@dataclass
class BatchScript:
    delay_s: float = 0.0                  # in_progress this long, then the rows are answered
    fail_rows: int = 0                    # the last N rows answer HTTP 500 (error file)
    expire_after: int | None = None       # only the first N rows run, then "expired"
    validation_error: str | None = None   # "failed" with this error
    token_limit: bool = False             # "failed": token_limit_exceeded
    cancel_s: float = 0.05                # time spent "cancelling"
    usage_scale: float = 1.0              # multiplies every row's token usage


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict
    script: BatchScript
    lines: list[dict]
    created: float
    status: str = "validating"
    errors: list[dict] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_at: float | None = None
    done_rows: int = 0
    failed_rows: int = 0
    ended: float | None = None             # monotonic time it reached its final status
    times: dict = field(default_factory=dict)


class BatchServer(FaultServer):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.default = BatchScript()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, _Batch] = {}
        self.rows: collections.Counter[str] = collections.Counter()
        self.creates = 0
        self.cancels = 0
        self.polls = 0
        self.on_create: Callable[[dict], None] | None = None
        self._scripts: collections.deque[BatchScript] = collections.deque()
        self._faults: collections.deque[tuple[str, int, bool]] = collections.deque()
        self._seq = 0

    def fault(self, route: str, status: int = 500, *, after: bool = False) -> None:
        """The next request to ``route`` (``files.create``, ``batches.create``,
        ``batches.retrieve``) answers ``status``; with ``after`` it is carried out first (a
        batch created whose answer is lost on the way)."""
        with self._lock:
            self._faults.append((route, status, after))

    def _take_fault(self, route: str) -> tuple[int, bool] | None:
        with self._lock:
            if self._faults and self._faults[0][0] == route:
                _, status, after = self._faults.popleft()
                return status, after
        return None

    async def _fail(self, writer, status: int) -> bool:
        return await self._send_json(writer, status, {"error": {"message": "injected fault",
                                                                 "type": "server_error"}})

    def stats(self) -> dict:
        out = super().stats()
        with self._lock:
            out.update(creates=self.creates, cancels=self.cancels, polls=self.polls,
                       rows=sum(self.rows.values()), distinct_rows=len(self.rows),
                       rows_sent_again=sum(n - 1 for n in self.rows.values()),
                       statuses=dict(collections.Counter(b.status for b in self.batches.values())))
        return out

    def script(self, *scripts: BatchScript) -> None:
        with self._lock:
            self._scripts.extend(scripts)

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_{self._seq:06d}"

    # -- routes -------------------------------------------------------------------------
    async def _dispatch(self, method, path, headers, raw, reader, writer):
        parts = path.strip("/").split("/")
        route = {("POST", 2, "files"): "files.create", ("POST", 2, "batches"): "batches.create",
                 ("GET", 3, "batches"): "batches.retrieve"}.get((method, len(parts), parts[1] if
                                                                  len(parts) > 1 else ""))
        fault = self._take_fault(route) if route else None
        if fault is not None and not fault[1]:
            return await self._fail(writer, fault[0])
        if parts[:2] == ["v1", "files"]:
            if method == "POST" and len(parts) == 2:
                answer = self._upload(headers, raw)
                if fault is not None:
                    return await self._fail(writer, fault[0])
                return await self._send_json(writer, 200, answer)
            if method == "GET" and len(parts) == 4 and parts[3] == "content":
                f = self.files.get(parts[2])
                if f is None:
                    return await self._not_found(writer, f"no file {parts[2]}")
                return await self._send(writer, 200, f["data"])
        if parts[:2] == ["v1", "batches"]:
            if method == "POST" and len(parts) == 2:
                status, body = self._create(json.loads(raw or b"{}"))
                if fault is not None:
                    return await self._fail(writer, fault[0])
                return await self._send_json(writer, status, body)
            if method == "GET" and len(parts) == 2:
                return await self._send_json(writer, 200, self._list(headers.get("x-fgrft-query", "")))
            batch = self.batches.get(parts[2]) if len(parts) >= 3 else None
            if batch is None:
                return await self._not_found(writer, f"no batch {path}")
            if method == "GET" and len(parts) == 3:
                self.polls += 1
                return await self._send_json(writer, 200, self._view(batch))
            if method == "POST" and len(parts) == 4 and parts[3] == "cancel":
                return await self._send_json(writer, 200, self._cancel(batch))
        return await super()._dispatch(method, path, headers, raw, reader, writer)

    async def _handle(self, reader, writer):
        # The base class drops the query string before dispatching; batches.list needs it.
        return await super()._handle(_QueryKeepingReader(reader), writer)

    async def _not_found(self, writer, message: str) -> bool:
        return await self._send_json(writer, 404, {"error": {"message": message,
                                                              "type": "invalid_request_error"}})

    # -- files --------------------------------------------------------------------------
    def _upload(self, headers: dict, raw: bytes) -> dict:
        message = BytesParser(policy=default_policy).parsebytes(
            b"Content-Type: " + headers.get("content-type", "").encode() + b"\r\n\r\n" + raw)
        fields: dict[str, Any] = {}
        filename = "upload.jsonl"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = part.get_payload(decode=True)
            if name == "file":
                filename = part.get_filename() or filename
        return self._store_file(fields.get("file") or b"", filename,
                                (fields.get("purpose") or b"batch").decode())

    def _store_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = self._next_id("file")
        self.files[file_id] = {"data": data, "filename": filename, "purpose": purpose}
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    # -- batches ------------------------------------------------------------------------
    def _create(self, body: dict) -> tuple[int, dict]:
        f = self.files.get(body.get("input_file_id", ""))
        if f is None:
            return 400, {"error": {"message": "input_file_id not found", "type": "invalid_request_error"}}
        with self._lock:
            script = self._scripts.popleft() if self._scripts else self.default
        lines = [json.loads(line) for line in f["data"].decode().splitlines() if line.strip()]
        batch = _Batch(id=self._next_id("batch"), input_file_id=body["input_file_id"],
                       endpoint=body.get("endpoint", ""), metadata=dict(body.get("metadata") or {}),
                       script=script, lines=lines, created=time.monotonic())
        problem = self._validate(batch)
        if problem is not None:
            batch.errors = [{"code": "invalid_request", "message": problem, "line": None, "param": None}]
        elif script.validation_error:
            batch.errors = [{"code": "invalid_request", "message": script.validation_error,
                             "line": 1, "param": None}]
        elif script.token_limit:
            batch.errors = [{"code": "token_limit_exceeded", "param": None, "line": None,
                             "message": "Enqueued token limit reached for this model."}]
        self.batches[batch.id] = batch
        self.creates += 1
        if batch.errors is None:
            self.rows.update(line["custom_id"] for line in lines)
        view = self._view(batch)
        if self.on_create is not None:
            self.on_create(view)
        return 200, view

    @staticmethod
    def _validate(batch: _Batch) -> str | None:
        ids = [line.get("custom_id") for line in batch.lines]
        if len(set(ids)) != len(ids):
            return "custom_id values must be unique"
        models = {(line.get("body") or {}).get("model") for line in batch.lines}
        if len(models) != 1:
            return f"one model per file, found {sorted(map(str, models))}"
        for line in batch.lines:
            if line.get("method") != "POST" or line.get("url") != batch.endpoint:
                return f"every line needs method POST and url {batch.endpoint}"
        return None

    def _refresh(self, b: _Batch) -> None:
        """Advance ``b`` to where the clock says it is."""
        now = time.monotonic()
        if b.status in ("completed", "expired", "cancelled", "failed"):
            return
        if b.errors is not None:
            self._end(b, "failed")
            return
        if b.status == "validating":
            b.status = "in_progress"
            b.times["in_progress_at"] = int(time.time())
        if b.status == "cancelling":
            if now >= b.cancel_at + b.script.cancel_s:
                self._run_rows(b, b.done_rows)
                self._end(b, "cancelled")
            return
        # In progress: rows finish evenly over the delay (what a cancel keeps).
        total = len(b.lines)
        limit = total if b.script.expire_after is None else min(total, b.script.expire_after)
        share = 1.0 if b.script.delay_s <= 0 else min(1.0, (now - b.created) / b.script.delay_s)
        b.done_rows = min(limit, int(total * share))
        if share >= 1.0:
            self._run_rows(b, limit)
            self._end(b, "completed" if b.script.expire_after is None else "expired")

    def _run_rows(self, b: _Batch, n: int) -> None:
        out, err = [], []
        fail_from = len(b.lines) - b.script.fail_rows
        for i, line in enumerate(b.lines):
            row = {"id": f"batch_req_{b.id}_{i}", "custom_id": line["custom_id"]}
            if i >= n:
                err.append({**row, "response": None,
                            "error": {"code": "batch_expired" if b.status != "cancelling"
                                      else "batch_cancelled",
                                      "message": "This request could not be executed before the "
                                                 "batch ended."}})
                continue
            request = Request("POST", line["url"], {}, line["body"])
            action = self.responder(request)
            if i >= fail_from or action.status != 200:
                err.append({**row, "response": {"status_code": 500, "request_id": row["id"],
                                                "body": {"error": {"message": "server error",
                                                                   "type": "server_error"}}},
                            "error": None})
                continue
            body = self._completion(action, request)
            if b.script.usage_scale != 1.0:
                body["usage"] = {k: int(v * b.script.usage_scale) if isinstance(v, int) else v
                                 for k, v in body["usage"].items()}
            out.append({**row, "response": {"status_code": 200, "request_id": row["id"],
                                            "body": body}, "error": None})
        b.done_rows, b.failed_rows = len(out), len(err)
        if out:
            b.output_file_id = self._store_file(_jsonl(out), f"{b.id}_output.jsonl",
                                                "batch_output")["id"]
        if err:
            b.error_file_id = self._store_file(_jsonl(err), f"{b.id}_errors.jsonl",
                                               "batch_output")["id"]

    @staticmethod
    def _end(b: _Batch, status: str) -> None:
        b.status = status
        b.ended = time.monotonic()
        b.times[f"{status}_at"] = int(time.time())

    def _cancel(self, b: _Batch) -> dict:
        self._refresh(b)
        if b.status in ("validating", "in_progress", "finalizing"):
            b.status = "cancelling"
            b.cancel_at = time.monotonic()
            b.times["cancelling_at"] = int(time.time())
            self.cancels += 1
        return self._view(b)

    def _view(self, b: _Batch) -> dict:
        self._refresh(b)
        finished = b.status in ("completed", "expired", "cancelled")
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "input_file_id": b.input_file_id,
            "completion_window": "24h", "status": b.status, "created_at": int(time.time()),
            "errors": {"object": "list", "data": b.errors} if b.errors else None,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
            "metadata": b.metadata, "model": (b.lines[0].get("body") or {}).get("model") if b.lines else None,
            "request_counts": {"total": len(b.lines),
                               "completed": b.done_rows if not finished else b.done_rows,
                               "failed": b.failed_rows},
            **b.times,
        }

    def _list(self, query: str) -> dict:
        params = urllib.parse.parse_qs(query)
        limit = int(params.get("limit", ["20"])[0])
        after = params.get("after", [None])[0]
        ordered = list(reversed(self.batches.values()))
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        page = [self._view(b) for b in ordered[:limit]]
        return {"object": "list", "data": page, "has_more": len(ordered) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None}


class _QueryKeepingReader:
    """Passes the request line's query string on as an ``x-fgrft-query`` header."""

    def __init__(self, reader):
        self._reader = reader

    async def readuntil(self, separator=b"\n"):
        head = await self._reader.readuntil(separator)
        first, _, rest = head.partition(b"\r\n")
        parts = first.split(b" ")
        if len(parts) == 3 and b"?" in parts[1]:
            target, _, query = parts[1].partition(b"?")
            first = b" ".join((parts[0], target, parts[2]))
            rest = b"x-fgrft-query: " + query + b"\r\n" + rest
        return first + b"\r\n" + rest

    def __getattr__(self, name):
        return getattr(self._reader, name)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fault server with Files and Batches endpoints")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-s", type=float, default=0.0, help="every batch's run time")
    parser.add_argument("--mix", choices=("fixed", "realistic"), default="fixed",
                        help="answer rows like the pipeline benchmark's responders")
    parser.add_argument("--expire-first", type=int, default=None,
                        help="the first batch expires after this many rows")
    parser.add_argument("--fail-rows", type=int, default=0,
                        help="the last N rows of the second batch fail")
    args = parser.parse_args(argv)
    from tests.support.step_responder import FALLBACK_MODEL, MODEL, MixResponder, StepResponder

    responder = MixResponder() if args.mix == "realistic" else StepResponder()
    server = BatchServer(port=args.port, responder=responder, models=(MODEL, FALLBACK_MODEL))
    server.default = BatchScript(delay_s=args.delay_s)
    server.script(BatchScript(delay_s=args.delay_s, expire_after=args.expire_first),
                  BatchScript(delay_s=args.delay_s, fail_rows=args.fail_rows))
    server.serve_forever()


if __name__ == "__main__":
    main()
