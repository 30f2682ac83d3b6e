"""The set-up command picks the builds for the machine: the CUDA ones where nvidia-smi lists a
GPU (torch for the driver's CUDA version, faiss-gpu, onnxruntime-gpu), the CPU ones elsewhere;
--gpu/--cpu override it. Detection is faked with a stand-in nvidia-smi; --dry-run installs nothing."""

import os
import subprocess

import pytest

from ..conftest import REPO


def setup_plan(tmp_path, *args: str, cuda: str | None = None) -> subprocess.CompletedProcess:
    smi = tmp_path / "nvidia-smi"
    if cuda is None:
        smi = tmp_path / "no-such-nvidia-smi"
    else:
        smi.write_text("#!/bin/sh\n"
                       'if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"; exit 0; fi\n'
                       f'echo "| NVIDIA-SMI 580.65   Driver Version: 580.65   CUDA Version: {cuda}     |"\n')
        smi.chmod(0o755)
    return subprocess.run(["bash", "scripts/setup.sh", "--dry-run", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, NVIDIA_SMI=str(smi)), timeout=60)


def test_this_cpu_machine_gets_the_cpu_builds(tmp_path):
    r = setup_plan(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cpu builds (no NVIDIA GPU found" in r.stdout
    assert "requirements-gpu.txt" not in r.stdout and "download.pytorch.org" not in r.stdout


@pytest.mark.parametrize(("cuda", "index"), [("12.8", "cu128"), ("13.0", "cu130"), ("12.6", "cu126")])
def test_a_gpu_machine_gets_the_cuda_builds_for_its_driver(tmp_path, cuda, index):
    r = setup_plan(tmp_path, cuda=cuda)
    assert r.returncode == 0, r.stderr
    assert f"gpu builds (nvidia-smi lists 1 GPU(s), driver CUDA {cuda}); torch for {index}" in r.stdout
    torch_version = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                         if line.startswith("torch==")).split("==")[1]
    assert f"torch=={torch_version}+{index} --index-url https://download.pytorch.org/whl/{index}" in r.stdout
    assert "uninstall -q -y faiss-cpu onnxruntime" in r.stdout and "-r requirements-gpu.txt" in r.stdout
    gpu_reqs = (REPO / "requirements-gpu.txt").read_text()
    assert "faiss-gpu-cu12==" in gpu_reqs and "onnxruntime-gpu==" in gpu_reqs


def test_overrides_and_an_old_driver(tmp_path):
    r = setup_plan(tmp_path, "--cpu", cuda="12.8")
    assert r.returncode == 0 and "cpu builds (asked for with --cpu; nvidia-smi lists 1 GPU(s)" in r.stdout
    r = setup_plan(tmp_path, "--gpu")
    assert r.returncode == 0 and "gpu builds (asked for with --gpu; no NVIDIA GPU found" in r.stdout
    r = setup_plan(tmp_path, cuda="12.2")
    assert r.returncode == 1 and "torch's CUDA builds need 12.6 or newer" in r.stderr
    r = setup_plan(tmp_path, "--fast")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_on_a_gpu_machine_the_cuda_lane_does_not_skip(monkeypatch):
    from test.cuda.test_cuda import lane_skip

    monkeypatch.delenv("ANYLOC_CUDA_ALLOW_SKIPS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="runs whole"):
        lane_skip("faiss sees no GPU (faiss-cpu installed)")
    monkeypatch.setenv("ANYLOC_CUDA_ALLOW_SKIPS", "1")
    with pytest.raises(pytest.skip.Exception):
        lane_skip("faiss sees no GPU (faiss-cpu installed)")
