"""`make gpu-check` on a host without a GPU says so and succeeds; with a device CUDA cannot use, it fails.
(Its GPU steps need a GPU host; they are not run here.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_nvidia_device_means_nothing_to_check_and_exit_0(tmp_path, capsys):
    gpu_check = _gpu_check()
    assert gpu_check.main(["--out", str(tmp_path / "out")], dev_dir=tmp_path, proc_dir=tmp_path / "none") == 0
    assert "no NVIDIA GPU on this host" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_device_that_cuda_cannot_use_fails(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA works on this host: the failure path cannot be shown")
    gpu_check = _gpu_check()
    (tmp_path / "nvidia0").touch()
    (tmp_path / "gpus" / "0000:3b:00.0").mkdir(parents=True)
    assert gpu_check.nvidia_devices(tmp_path, tmp_path / "gpus") == ["nvidia0", "pci:0000:3b:00.0"]
    assert gpu_check.main(["--out", str(tmp_path / "out")], dev_dir=tmp_path, proc_dir=tmp_path / "gpus") == 1
    err = capsys.readouterr().err
    assert "NVIDIA device(s) present (nvidia0, pci:0000:3b:00.0) but CUDA is unusable" in err
    assert "CPU-only wheel" in err or "no usable CUDA device" in err


def test_summary_table_shows_failures_with_their_first_line():
    gpu_check = _gpu_check()
    rows = gpu_check.table([{"step": "cuda", "ok": True, "seconds": 0.1, "name": "H100"},
                            {"step": "evaluate_vllm", "ok": False, "seconds": 3.0, "error": "exit status 1\ntail"}])
    assert "| cuda | yes | 0.1 | name=H100 |" in rows and "| evaluate_vllm | NO | 3.0 | exit status 1 |" in rows


def test_plan_lists_every_step_without_running_any(tmp_path, capsys):
    gpu_check = _gpu_check()
    assert gpu_check.main(["--plan", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("fgrft.train" in line and "trainer=single_gpu" in line for line in lines) == 4
    assert any("trainer=zero3_8gpu trainer.num_processes=1 trainer.max_steps=10" in line for line in lines)
    assert [line.split("inference=")[1].split()[0] for line in lines if "fgrft.evaluate" in line] == ["hf", "vllm"]
    assert not (tmp_path / "out").exists()
