"""Progress of a Stage 1 run: a live bar on a terminal, periodic log lines otherwise.

    progress = Progress(total=len(questions), counters=ledger)
    await progress.run_while(work)         # redraws / logs until ``work`` finishes
    progress.finished(outcome)             # once per question

Every number shown is counted, none simulated: done / kept / dropped / revised come from the
questions' outcomes; calls, cache hits and dollars from the run's ledger (the same numbers
that end up in summary.json).
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Awaitable, Protocol, TextIO, TypeVar

log = logging.getLogger("fgrft.generate")
T = TypeVar("T")

BAR_WIDTH = 24
TTY_REFRESH_S = 0.5
LOG_EVERY_S = 15.0


class Counters(Protocol):  # what Progress reads from the ledger
    calls: int
    cache_hits: int
    cost_usd: float


class Progress:
    def __init__(self, total: int, counters: Counters | None = None, *,
                 stream: TextIO | None = None, tty: bool | None = None,
                 log_every_s: float = LOG_EVERY_S):
        self.total = total
        self.counters = counters
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.log_every_s = log_every_s
        self.done = self.kept = self.dropped = self.revised = 0
        self._started = time.monotonic()
        self._drawn = False

    # -- counting -----------------------------------------------------------------------
    def finished(self, outcome: Any) -> None:
        self.done += 1
        if outcome.kept:
            self.kept += 1
        else:
            self.dropped += 1
        if getattr(outcome, "revised", 0):
            self.revised += 1

    def line(self) -> str:
        c = self.counters
        calls, hits, usd = (c.calls, c.cache_hits, c.cost_usd) if c is not None else (0, 0, 0.0)
        elapsed = time.monotonic() - self._started
        return (f"{self.done}/{self.total} done | kept {self.kept} | dropped {self.dropped} | "
                f"revised {self.revised} | calls {calls} | cache hits {hits} | ${usd:.4f} | "
                f"{elapsed:.0f}s")

    def bar(self) -> str:
        filled = int(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] " + self.line()

    # -- showing ------------------------------------------------------------------------
    def draw(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.bar())
            self.stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", self.line())

    async def run_while(self, work: Awaitable[T]) -> T:
        """Await ``work`` while showing progress; always ends with one final line."""
        task = asyncio.ensure_future(work)
        every = TTY_REFRESH_S if self.tty else self.log_every_s
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=every)
                if done:
                    return task.result()
                self.draw()
        finally:
            if not task.done():
                task.cancel()
            self.close()

    def close(self) -> None:
        if self.tty:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("finished: %s", self.line())


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
