"""Benchmark: call-engine throughput against the fault server, and a fully cached re-run.

    python -m benchmarks.engine_throughput [--calls 3000] [--concurrency 64] [--latency-s 0.2]
                                            [--server process|thread] [--client lean|sdk]
                                            [--plain] [--json FILE]

Three measurements, each against a fresh fault server that answers every request after a
fixed latency (the server runs in its own process by default, so that its CPU work does not
compete with the client's for one GIL):

1. fixture ceiling: a minimal raw asyncio HTTP/1.1 client (keep-alive, one connection per
   worker, no SDK, no engine) sends the calls at the same concurrency. What the server and
   the machine allow, without the engine.
2. engine: the same calls through ``Engine`` with the SQLite response cache, as Stage 1
   makes them (structured JSON answers checked against a schema; ``--plain`` for text).
3. cached re-run: a new engine over the same cache; every call must be a cache hit (the
   server must see zero requests), and this path must not import torch.

Spans are measured by the server: first request received to last response sent. The
latency-bound ideal is ``max(calls * latency / concurrency, latency)``. Target:
``engine span <= max(1.2 * ideal, 1.1 * fixture-ceiling span)``.

``--server thread`` runs the fault server in a thread of the benchmark process (how the test
fixture runs it); useful to see what sharing the GIL with the server costs. ``--client sdk``
sends through ``openai.AsyncOpenAI`` instead of the engine's lean local client (the "before").
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from tests.support.fault_server import FaultServer, ServerProcess

SCHEMA = {"type": "object", "properties": {"echo": {"type": "string", "maxLength": 200}},
          "required": ["echo"], "additionalProperties": False}
MODEL = "fault-model"


# ----------------------------------------------------------------------------- the server


class SpanServer(FaultServer):
    """The fault server, also recording when the first chat request arrived and when the last
    response was handed to the socket (the server-side span)."""

    first_arrival: float | None = None
    last_sent: float | None = None

    async def _chat(self, headers, raw, reader, writer):
        now = time.monotonic()
        if self.first_arrival is None or now < self.first_arrival:
            self.first_arrival = now
        try:
            return await super()._chat(headers, raw, reader, writer)
        finally:
            self.last_sent = time.monotonic()

    def stats(self) -> dict:
        out = super().stats()
        span = (self.last_sent - self.first_arrival
                if self.first_arrival is not None and self.last_sent is not None else None)
        out["span_s"] = span
        return out


class ServerHandle:
    """A SpanServer in a child process (default) or in a thread of this one."""

    def __init__(self, latency_s: float, mode: str = "process"):
        self.latency_s, self.mode = latency_s, mode
        self._child: ServerProcess | None = None
        self._server: SpanServer | None = None
        self.base_url = ""

    def __enter__(self) -> "ServerHandle":
        if self.mode == "thread":
            self._server = SpanServer(latency_s=self.latency_s).start()
        else:
            self._child = ServerProcess(["-m", "benchmarks.engine_throughput", "--serve",
                                         "--latency-s", str(self.latency_s)]).__enter__()
        self.base_url = (self._server or self._child).base_url
        return self

    def stats(self) -> dict:
        return (self._server or self._child).stats()

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()
        if self._child is not None:
            self._child.__exit__(*exc)


def serve(latency_s: float) -> None:
    SpanServer(latency_s=latency_s).serve_forever()


# ----------------------------------------------------------------------------- raw client


async def raw_client(base_url: str, calls: int, concurrency: int) -> float:
    """Send ``calls`` chat requests over ``concurrency`` keep-alive connections; wall seconds."""
    host, port = base_url.split("//", 1)[1].split("/", 1)[0].split(":")
    next_call = iter(range(calls))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in next_call:
                body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}],
                                   "seed": i}).encode()
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (host.encode(), len(body), body))
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                answer = json.loads(await reader.readexactly(length))
                assert answer["choices"][0]["message"]["content"], answer
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- engine runs


async def engine_run(base_url: str, calls: int, concurrency: int, cache_dir: Path,
                     plain: bool, client: str = "lean") -> tuple[float, dict]:
    """All calls through a fresh engine over the cache in ``cache_dir``; (wall s, counters)."""
    from fgrft.config import PRICES_FILE
    from fgrft.llm import EndpointSettings, Engine, Ledger, SqliteResponseCache, load_prices
    from fgrft.llm.engine import default_client, sdk_client

    cache = SqliteResponseCache.in_dir(cache_dir)
    ledger = Ledger(load_prices(PRICES_FILE))
    cfg = EndpointSettings(base_url=base_url, model=MODEL, kind="vllm", concurrency=concurrency,
                         timeout_s=60.0, name="bench")
    try:
        factory = sdk_client if client == "sdk" else default_client
        async with Engine(cache=cache, ledger=ledger, client_factory=factory) as engine:
            ep = engine.endpoint(cfg)
            start = time.perf_counter()
            results = await asyncio.gather(*(
                ep.call([{"role": "user", "content": f"q{i}"}], schema=None if plain else SCHEMA,
                        sampling={"temperature": 0.7, "seed": i, "max_tokens": 64})
                for i in range(calls)))
            wall = time.perf_counter() - start
    finally:
        cache.close()
    assert all(r.outcome == "ok" for r in results)
    return wall, {"calls": ledger.calls, "cache_hits": ledger.cache_hits,
                  "lane_peak": ep.lane.peak_in_flight}


def run(calls: int, concurrency: int, latency_s: float, server_mode: str, plain: bool,
        client: str = "lean") -> dict:
    ideal = max(calls * latency_s / concurrency, latency_s)
    out: dict = {"calls": calls, "concurrency": concurrency, "latency_s": latency_s,
                 "server": server_mode, "client": client, "mode": "plain" if plain else "structured",
                 "ideal_s": ideal, "cpus": os.cpu_count(), "python": platform.python_version()}

    with ServerHandle(latency_s, server_mode) as server:
        out["ceiling_wall_s"] = asyncio.run(raw_client(server.base_url, calls, concurrency))
        stats = server.stats()
        assert stats["total"] == calls, stats
        out["ceiling_span_s"] = stats["span_s"]

    with tempfile.TemporaryDirectory(prefix="fgrft-bench-") as tmp, \
            ServerHandle(latency_s, server_mode) as server:
        import fgrft.llm  # noqa: F401 - imported before the CPU clock starts
        cpu0 = time.process_time()
        wall, counters = asyncio.run(engine_run(server.base_url, calls, concurrency, Path(tmp), plain,
                                                client))
        out["engine_cpu_ms_per_call"] = (time.process_time() - cpu0) * 1000 / calls
        stats = server.stats()
        assert stats["total"] == calls and counters["calls"] == calls, (stats, counters)
        out.update(engine_wall_s=wall, engine_span_s=stats["span_s"],
                   server_peak_in_flight=stats["peak_in_flight"])

        wall, counters = asyncio.run(engine_run(server.base_url, calls, concurrency, Path(tmp), plain,
                                                client))
        after = server.stats()
        out.update(cached_wall_s=wall, cached_server_calls=after["total"] - stats["total"],
                   cached_engine_calls=counters["calls"], cached_hits=counters["cache_hits"])
        # The cached path (engine, cache, accounting) must stay free of the ML stack.
        out["torch_imported"] = "torch" in sys.modules

    out["span_over_ideal"] = out["engine_span_s"] / ideal
    out["span_over_ceiling"] = out["engine_span_s"] / out["ceiling_span_s"]
    out["target_s"] = max(1.2 * ideal, 1.1 * out["ceiling_span_s"])
    out["target_met"] = out["engine_span_s"] <= out["target_s"]
    return out


def report(r: dict) -> str:
    return "\n".join([
        f"engine throughput: {r['calls']:,} {r['mode']} calls, concurrency {r['concurrency']}, "
        f"server latency {r['latency_s'] * 1000:.0f} ms, server in a {r['server']}, "
        f"{r['client']} client, "
        f"{r['cpus']} CPUs, Python {r['python']}",
        f"  latency-bound ideal      {r['ideal_s']:7.2f} s",
        f"  fixture ceiling (raw)    {r['ceiling_span_s']:7.2f} s server span "
        f"({r['ceiling_wall_s']:.2f} s client wall)",
        f"  engine + cache + ledger  {r['engine_span_s']:7.2f} s server span "
        f"({r['engine_wall_s']:.2f} s client wall, {r['engine_cpu_ms_per_call']:.2f} ms CPU/call, "
        f"server peak {r['server_peak_in_flight']} in flight)",
        f"  ratios                   span/ideal {r['span_over_ideal']:.3f}, "
        f"span/ceiling {r['span_over_ceiling']:.3f}",
        f"  target                   span <= {r['target_s']:.2f} s: "
        f"{'met' if r['target_met'] else 'NOT met'}",
        f"  cached re-run            {r['cached_wall_s']:7.2f} s wall, "
        f"{r['cached_server_calls']} server calls, {r['cached_hits']:,} cache hits, "
        f"torch imported: {r['torch_imported']}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--server", choices=("process", "thread"), default="process")
    parser.add_argument("--client", choices=("lean", "sdk"), default="lean",
                        help="the engine's client for http:// (sdk: openai.AsyncOpenAI, the 'before')")
    parser.add_argument("--plain", action="store_true", help="plain-text calls (no schema)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.latency_s)
        return 0
    result = run(args.calls, args.concurrency, args.latency_s, args.server, args.plain, args.client)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    assert result["cached_server_calls"] == 0 and result["cached_engine_calls"] == 0, result
    assert not result["torch_imported"], "the engine/cache path imported torch"
    return 0


if __name__ == "__main__":
    sys.exit(main())
