"""The embedded backend: a local vLLM CPU server on the smol model, started and stopped by us.

    with EmbeddedServer(model_dir, log_path=run_dir / "server.log") as server:
        ...  # OpenAI-compatible calls to server.base_url, model server.model

Why a server rather than an in-process engine: Stage 1 talks to every backend through the
same call engine (lanes, cache, accounting), so the embedded model is just one more
OpenAI-compatible endpoint, shared by both roles (one lane).

Flags (RUNTIME.md): the CPU-safe engine settings of :func:`fgrft.models.vllm_engine_kwargs`
spelled as flags (bf16, eager, chunked prefill off, an explicit small KV cache,
``--generation-config vllm``), plus the guidance structured-output backend without free
whitespace, which is the one that gave strictly valid JSON here.

No orphans. The server runs in its own session (process group), so stopping it reaches the
engine-core process it spawns: SIGTERM to the group, then SIGKILL after a grace period. It is
stopped on normal exit, on an exception, on Ctrl-C, and on SIGTERM to this process (a handler
turns it into an exception while the server lives). If this process is killed outright
(SIGKILL), Linux's parent-death signal delivers SIGTERM to the server.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

SERVED_NAME = "smol"
MAX_MODEL_LEN = 4096           # P3's prompt (question, P1's analysis, feedback) plus its answer
KV_CACHE_GIB = 0.75            # ~34k tokens of smol's KV cache: about 10 full-length sequences
START_TIMEOUT_S = 600.0        # ~30 s when idle; much longer on 2 busy shared cores
STOP_GRACE_S = 15.0
STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The embedded server did not come up (the message carries its log's tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def engine_flags(kwargs: Mapping[str, Any]) -> list[str]:
    """``vllm.LLM`` keyword arguments spelled as server flags (booleans as --x / --no-x)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        if key == "model" or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def server_command(model_dir: str | Path, port: int, *, host: str = "127.0.0.1",
                   max_model_len: int = MAX_MODEL_LEN, kv_cache_gib: float = KV_CACHE_GIB,
                   served_name: str = SERVED_NAME) -> list[str]:
    from fgrft.models.vllm_settings import vllm_engine_kwargs

    # cpu=True: the embedded backend is the offline CPU profile whatever the machine.
    kwargs = vllm_engine_kwargs(model_dir, cpu=True, max_model_len=max_model_len,
                                kv_cache_gib=kv_cache_gib)
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", served_name,
            "--host", host, "--port", str(port),
            *engine_flags(kwargs),
            "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS),
            "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedServer:
    """See the module docstring."""

    def __init__(self, model_dir: str | Path, *, log_path: str | Path,
                 start_timeout_s: float = START_TIMEOUT_S, host: str = "127.0.0.1",
                 command: list[str] | None = None, **command_kwargs: Any):
        """``command`` replaces the vLLM command line (tests); ``{port}`` in it is filled in."""
        self.model_dir = Path(model_dir)
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self.host = host
        self.port = 0
        self.model = command_kwargs.get("served_name", SERVED_NAME)
        self._command_kwargs = command_kwargs
        self._command = command
        self.proc: subprocess.Popen | None = None
        self._old_sigterm: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> "EmbeddedServer":
        self.port = free_port(self.host)
        if self._command is not None:
            command = [part.replace("{port}", str(self.port)) for part in self._command]
        else:
            command = server_command(self.model_dir, self.port, host=self.host,
                                     **self._command_kwargs)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting the embedded vLLM server on %s (log: %s)", self.base_url, self.log_path)
        self._catch_sigterm()
        from fgrft.models.vllm_settings import cpu_engine_env

        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **cpu_engine_env(cpu=True)},
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        started = time.monotonic()
        url = f"http://{self.host}:{self.port}/health"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"the embedded vLLM server exited with status {code} while "
                                  f"starting; its log ends:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        log.info("embedded server ready in %.0f s", time.monotonic() - started)
                        return
            if time.monotonic() - started > self.start_timeout_s:
                raise ServerError(f"the embedded vLLM server was not ready after "
                                  f"{self.start_timeout_s:.0f} s; its log ends:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    log.warning("embedded server ignored SIGTERM for %.0f s: killing it", STOP_GRACE_S)
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(STOP_GRACE_S)
            if proc is not None:
                # The engine core may outlive the API process for a moment; the group goes too.
                _signal_group(proc, signal.SIGKILL)
        finally:
            self._restore_sigterm()

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- SIGTERM to us must not leave the server behind ------------------------------------
    def _catch_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; pdeathsig still covers a kill

        def on_sigterm(signum, frame):
            raise KeyboardInterrupt("SIGTERM")

        self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
