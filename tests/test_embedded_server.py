"""The embedded backend: the vLLM command line, the server's life cycle (no orphans), and one
real end-to-end run on the smol model (slow: the server starts in 30-60 s on 2 cores)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fgrft.models.vllm_settings import cpu_has_native_bf16

from fgrft.models.server import EmbeddedServer, ServerError, server_command

# A stand-in server: answers /health after a moment and keeps a child of its own, like vLLM's
# API process and its engine core.
FAKE_SERVER = textwrap.dedent("""
    import http.server, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print("CHILD", child.pid, flush=True)
    if sys.argv[2] == "die":
        sys.exit(7)
    time.sleep(0.5)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def child_pid(log: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith("CHILD "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no child pid in {log}")


def test_server_command_has_the_runtime_flags(tmp_path):
    cmd = server_command(tmp_path, 8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
    for flag in ("--enforce-eager", "--no-enable-chunked-prefill", "--generation-config vllm",
                 f"--dtype {dtype}", "--host 127.0.0.1", "--port 8123", "--served-model-name smol",
                 "--max-model-len 4096"):
        assert flag in joined, flag
    assert "--gpu-memory-utilization" not in joined
    assert int(cmd[cmd.index("--kv-cache-memory-bytes") + 1]) < 2**30
    so = json.loads(cmd[cmd.index("--structured-outputs-config") + 1])
    assert so == {"backend": "guidance", "disable_any_whitespace": True}


def test_stop_takes_the_whole_process_group(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    log = tmp_path / "server.log"
    with EmbeddedServer(tmp_path, log_path=log, command=[sys.executable, str(script), "{port}", "ok"]) as s:
        server_pid, grandchild = s.proc.pid, child_pid(log)
        assert alive(server_pid) and alive(grandchild)
    assert wait_gone(server_pid) and wait_gone(grandchild)


def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    log = tmp_path / "server.log"
    with pytest.raises(ServerError, match="exited with status 7") as err:
        EmbeddedServer(tmp_path, log_path=log, command=[sys.executable, str(script), "{port}", "die"]).start()
    assert "CHILD" in str(err.value)
    assert wait_gone(child_pid(log))  # its orphaned child went with the group


def test_a_killed_or_terminated_parent_leaves_no_server(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_SERVER)
    parent = textwrap.dedent(f"""
        import sys, time
        from fgrft.models.server import EmbeddedServer
        with EmbeddedServer(".", log_path={str(tmp_path / '{}.log')!r}.format(sys.argv[1]),
                            command=[sys.executable, {str(script)!r}, "{{port}}", "ok"]) as s:
            print("SERVER", s.proc.pid, flush=True)
            time.sleep(300)
    """)
    for how, sig in (("kill", signal.SIGKILL), ("term", signal.SIGTERM)):
        proc = subprocess.Popen([sys.executable, "-c", parent, how], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("SERVER"), line
        server_pid = int(line.split()[1])
        grandchild = child_pid(tmp_path / f"{how}.log")
        proc.send_signal(sig)
        proc.wait(30)
        # kill -9: the parent-death signal; SIGTERM: the handler stops the group on the way out
        assert wait_gone(server_pid), how
        if sig == signal.SIGTERM:
            assert wait_gone(grandchild), how
        else:
            os.kill(grandchild, signal.SIGKILL)  # the stand-in does not forward signals; vLLM does


@pytest.mark.slow
def test_embedded_end_to_end_on_the_smol_model(tmp_path, smol_path):
    # The built model is shared with the suite; the response cache is this test's own.
    models = tmp_path / ".cache" / "fgrft" / "models"
    models.mkdir(parents=True)
    (models / "smol").symlink_to(smol_path, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # Short caps keep this test short (P1's full answer does not fit 64 tokens, so it is
    # dropped as a parse failure after one call); the full chain runs in the fault-server tests.
    r = subprocess.run([sys.executable, "-m", "fgrft.generate", "source.limit=2",
                        "generator.max_output_tokens=64", "verifier.max_output_tokens=64",
                        "generator.steps.p1.max_tokens=64"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (summary_path,) = list((tmp_path / "outputs").rglob("summary.json"))
    d = summary_path.parent
    summary = json.loads(summary_path.read_text())
    # smol is weak: samples may well be dropped, but every one is accounted for
    assert summary["questions"] == 2
    assert summary["kept"] + sum(summary["dropped"].values()) == 2
    assert summary["calls"] >= 2 and summary["cost_usd"] == 0
    assert set(summary["tokens"]) == {"smol"} and summary["tokens"]["smol"]["completion"] > 0
    assert len((d / "records.jsonl").read_text().splitlines()) == summary["kept"]
    assert len((d / "traces.jsonl").read_text().splitlines()) == summary["calls"]
    assert "embedded server ready" in r.stdout
    # the server is gone: no process still runs on this test's model
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(models) not in ps and str(smol_path) not in ps
