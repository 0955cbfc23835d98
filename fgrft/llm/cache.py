"""A crash-safe SQLite response cache for the call engine (``Engine(cache=...)``).

    cache = SqliteResponseCache.in_dir(cfg.paths.cache)   # <cache>/llm/responses.sqlite
    async with Engine(cache=cache) as engine: ...
    cache.close()

Keys are the engine's request keys (:func:`fgrft.llm.profiles.request_key`: a hash of the
endpoint kind, model, messages, schema as sent, every sampling parameter sent, the attempt
number and the endpoint's ``cache_scope``), so editing one prompt changes only that call's key
and a resumed run re-pays only calls whose inputs changed.

What is stored: the engine's parsed response of every *well-formed* answer (content, refusal,
finish_reason, model, usage, latency), whatever the validation later says about its content.
A malformed body is never stored (it says nothing about the model), but an off-schema JSON
answer is: a resumed run replays the same attempts, reaches the same verdicts and pays nothing
twice. Usage and latency are also kept as columns, for inspection with plain SQL.

Crash safety, in two steps. A row is *committed* once its transaction is in the WAL file:
the operating system holds it, so a process killed with ``kill -9`` keeps it. :meth:`put`
returns then, and the engine awaits it (inside the call's lane slot) before a call counts as
done, so a process killed at any moment loses only calls that were in flight. The row is
*synced* (a power cut keeps it too) when a syncer thread fsyncs the WAL file right after the
commit; :meth:`close` returns only once every row is synced (``durable=False``: no fsync at
all). Waiting for the fsync in :meth:`put` would hold the lane slot, that is the provider's
concurrency, for the disk's fsync time (milliseconds per call, far more on a busy disk); a
power cut can now also lose the answers committed in the last fsync's time. SQLite's journal
makes every commit atomic, so a kill during a commit leaves the old state, never a torn row.

Concurrency. Reads are single-row primary-key lookups (tens of microseconds), done inline on
the caller's thread through one read connection behind a lock. Writes go to one writer thread
that commits whatever has queued up in one transaction (group commit) and then wakes each
waiting coroutine; a syncer thread fsyncs the WAL once for all the commits made while it was
busy (group sync: one fsync for many calls finishing together). The database is in
WAL mode with a busy timeout, so several processes may share one cache file: readers never
block, and writers queue for the write lock instead of failing. (With ``synchronous=NORMAL``
SQLite itself syncs the WAL before each checkpoint and the database after it, so a row that
left the WAL for the database file is synced too.)
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_SUBDIR = "llm"
CACHE_FILE = "responses.sqlite"
SCHEMA_VERSION = 1
# Largest group commit; bounds the time one transaction holds the write lock.
MAX_BATCH = 512

_DDL = """
CREATE TABLE IF NOT EXISTS responses (
    key               TEXT PRIMARY KEY,
    response          TEXT NOT NULL,  -- the engine's response dict, as JSON
    model             TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
    latency_s         REAL,
    created_at        REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    round_key     TEXT PRIMARY KEY,   -- also in the provider batch's metadata
    base_url      TEXT NOT NULL,
    model         TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    request_keys  TEXT NOT NULL,      -- JSON list of the response keys the batch answers
    batch_id      TEXT,               -- null until batches.create has answered
    status        TEXT NOT NULL,      -- intent | submitted | done | refused
    provider_status TEXT,
    unanswered    TEXT,               -- JSON list, once done: rows without a usable answer
    billed_usd    REAL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
"""
_INSERT = ("INSERT OR REPLACE INTO responses (key, response, model, prompt_tokens, cached_tokens,"
           " completion_tokens, reasoning_tokens, latency_s, created_at)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_STOP = object()


class CacheError(RuntimeError):
    """The cache file cannot be used (wrong schema version, not a database, ...)."""


def default_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / CACHE_SUBDIR / CACHE_FILE


class SqliteResponseCache:
    """See the module docstring. ``durable=False`` skips the sync: still safe against a
    killed process, not against a power cut, and without an fsync per batch."""

    def __init__(self, path: str | Path, *, durable: bool = True, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self.busy_timeout_s = busy_timeout_s
        self.hits = self.misses = self.writes = self.commits = 0
        self._read_lock = threading.Lock()
        self._reader = self._connect()
        self._init_schema()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        # Commits made since the syncer last started an fsync of the WAL (see _sync_loop).
        self._unsynced = 0
        self.sync_error: CacheError | None = None
        self._sync_wanted = threading.Condition()
        self._syncer: threading.Thread | None = None
        self.syncs = 0
        self._closed = False

    @classmethod
    def in_dir(cls, cache_dir: str | Path, **kwargs) -> "SqliteResponseCache":
        """The cache under ``paths.cache``: ``<cache_dir>/llm/responses.sqlite``."""
        return cls(default_path(cache_dir), **kwargs)

    # -- connections --------------------------------------------------------------------
    def _connect(self, synchronous: str | None = None) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so the
        # module never opens one behind our back. check_same_thread=False: the reader is used
        # from whichever thread runs the event loop, always under _read_lock.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        synchronous = synchronous or ("FULL" if self.durable else "NORMAL")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise CacheError(f"{self.path}: not a usable SQLite database ({exc})") from None
        return conn

    def _init_schema(self) -> None:
        with self._read_lock:
            conn = self._reader
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Statement by statement: executescript() would COMMIT on its own.
                for statement in filter(str.strip, _DDL.split(";")):
                    conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise CacheError(f"{self.path}: cache schema version {row[0]}, this code "
                                     f"reads {SCHEMA_VERSION}; use another paths.cache or delete it")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- the engine's hook --------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        with self._read_lock:
            row = self._reader.execute("SELECT response FROM responses WHERE key=?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    async def put(self, key: str, response: dict) -> None:
        """Store one well-formed response; returns once it is committed (a killed process
        keeps it); the fsync follows (see the module docstring)."""
        await asyncio.wrap_future(self._submit(key, response))

    def put_blocking(self, key: str, response: dict) -> None:
        """:meth:`put` for code outside an event loop."""
        self._submit(key, response).result()

    def _submit(self, key: str, response: dict) -> Future:
        if not response.get("well_formed"):
            # The engine never does this; a caller that did would cache a transport accident.
            raise ValueError("only well-formed responses are cached")
        if self._closed:
            raise CacheError(f"{self.path}: cache is closed")
        usage = response.get("usage") or {}
        row = (key, json.dumps(response, ensure_ascii=False, separators=(",", ":")),
               response.get("model"), int(usage.get("prompt", 0)), int(usage.get("cached", 0)),
               int(usage.get("completion", 0)), int(usage.get("reasoning", 0)),
               response.get("latency_s"), time.time())
        future: Future = Future()
        self._ensure_writer()
        self._queue.put((row, future))
        return future

    # -- the writer thread --------------------------------------------------------------
    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    if self.durable:
                        self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                                        name=f"fgrft-cache-syncer:{self.path.name}")
                        self._syncer.start()
                    self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                    name=f"fgrft-cache-writer:{self.path.name}")
                    self._writer.start()

    def _write_loop(self) -> None:
        # NORMAL: a commit writes the WAL without an fsync; the syncer thread does that.
        conn = self._connect("NORMAL")
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                self._commit(conn, batch)
                if stop:
                    return
        finally:
            conn.close()
            self._stop_syncer()

    def _commit(self, conn: sqlite3.Connection, batch: list) -> None:
        try:
            # BEGIN IMMEDIATE takes the write lock now (waiting up to the busy timeout for
            # another process) rather than failing half-way through the batch.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, [row for row, _ in batch])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            log.error("response cache %s: commit of %d rows failed: %s", self.path, len(batch), exc)
            for _, future in batch:
                _resolve(future, CacheError(f"{self.path}: commit failed: {exc}"))
            return
        self.writes += len(batch)
        self.commits += 1
        for _, future in batch:
            _resolve(future)
        if self._syncer is not None:
            with self._sync_wanted:
                self._unsynced += 1
                self._sync_wanted.notify()

    # -- the syncer thread --------------------------------------------------------------
    def _sync_loop(self) -> None:
        # One fsync covers every commit made before it starts (group sync).
        wal = Path(f"{self.path}-wal")
        while True:
            with self._sync_wanted:
                while not self._unsynced and self._syncer is not None:
                    self._sync_wanted.wait()
                waiting, self._unsynced = self._unsynced, 0
                stopping = self._syncer is None
            if waiting:
                error = self._sync(wal)
                self.syncs += 1
                if error is not None and self.sync_error is None:
                    self.sync_error = error
            if stopping:
                return

    def _sync(self, wal: Path) -> BaseException | None:
        """fsync the WAL file: every commit made before this call is then on disk."""
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return None  # checkpointed into the database and removed: SQLite synced it
        except OSError as exc:
            return CacheError(f"{wal}: cannot open for fsync: {exc}")
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error("response cache %s: fsync failed: %s", wal, exc)
            return CacheError(f"{wal}: fsync failed: {exc}")
        finally:
            os.close(fd)
        return None

    def _stop_syncer(self) -> None:
        syncer = self._syncer
        if syncer is not None:
            with self._sync_wanted:
                self._syncer = None
                self._sync_wanted.notify()
            syncer.join()

    # -- provider batch intents ---------------------------------------------------------
    # Written through the read connection (WAL lets it write too) and committed before the
    # call returns, so an intent is on disk before the batch it describes is created.
    def add_batch_intent(self, round_key: str, base_url: str, model: str, input_file_id: str,
                         request_keys: list[str]) -> None:
        now = time.time()
        self._write("INSERT INTO batches (round_key, base_url, model, input_file_id, request_keys,"
                    " status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'intent', ?, ?)",
                    (round_key, base_url, model, input_file_id, json.dumps(request_keys), now, now))

    def update_batch_intent(self, round_key: str, **fields) -> None:
        allowed = {"batch_id", "status", "provider_status", "unanswered", "billed_usd"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"update_batch_intent: fields must be among {sorted(allowed)}")
        if "unanswered" in fields:
            fields["unanswered"] = json.dumps(fields["unanswered"])
        sets = ", ".join(f"{k}=?" for k in fields)
        self._write(f"UPDATE batches SET {sets}, updated_at=? WHERE round_key=?",
                    (*fields.values(), time.time(), round_key))

    def batch_intents(self) -> list[dict]:
        with self._read_lock:
            cur = self._reader.execute("SELECT * FROM batches ORDER BY created_at")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row)) for row in cur.fetchall()]
        for row in rows:
            row["request_keys"] = json.loads(row["request_keys"])
            row["unanswered"] = json.loads(row["unanswered"]) if row["unanswered"] else []
        return rows

    def _write(self, sql: str, params: tuple) -> None:
        if self._closed:
            raise CacheError(f"{self.path}: cache is closed")
        with self._read_lock:
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                self._reader.execute(sql, params)
                self._reader.execute("COMMIT")
            except BaseException:
                self._reader.execute("ROLLBACK")
                raise

    # -- inspection and life cycle ------------------------------------------------------
    def __len__(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def keys(self) -> set[str]:
        with self._read_lock:
            return {k for (k,) in self._reader.execute("SELECT key FROM responses")}

    def close(self) -> None:
        """Finish pending writes, sync them and close. Safe to call twice. Raises
        :class:`CacheError` if an fsync failed (the rows are committed, maybe not on disk)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
        with self._read_lock:
            self._reader.close()
        if self.sync_error is not None:
            raise self.sync_error

    def __enter__(self) -> "SqliteResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _resolve(future: Future, exc: BaseException | None = None) -> None:
    # A caller cancelled while waiting (its task was cancelled) has given up on the answer;
    # setting a result on its future would raise in this thread and kill the writer.
    try:
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
    except Exception:  # noqa: BLE001 - InvalidStateError: already cancelled
        pass
