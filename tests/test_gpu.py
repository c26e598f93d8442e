"""ser.ops.gpu: the start-up guard of the CUDA images, with stand-ins for torch builds.

Arch lists as the wheels report them (torch.cuda.get_arch_list()):
cu126 lists sm_50..sm_90 incl. sm_70; cu128 from 2.11 and cu130 start at sm_75.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ser.ops import gpu

CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def fake_torch(version="2.13.0+cu126", cuda="12.6", archs=CU126, devices=()):
    """A torch stand-in: devices are (name, (major, minor))."""
    devices = list(devices)
    cuda_ns = SimpleNamespace(
        get_arch_list=lambda: list(archs) if cuda else [],
        is_available=lambda: bool(devices),
        device_count=lambda: len(devices),
        get_device_capability=lambda i: devices[i][1],
        get_device_name=lambda i: devices[i][0],
    )
    return SimpleNamespace(__version__=version, version=SimpleNamespace(cuda=cuda), cuda=cuda_ns)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(gpu.REQUIRED_ARCH_ENV, raising=False)
    monkeypatch.delenv(gpu.REQUIRE_DEVICE_ENV, raising=False)


def test_cpu_build_without_requirement_reports():
    report = gpu.check_gpu_arch(torch_module=fake_torch("2.13.0+cpu", None, []))
    assert report.cuda_version is None and report.compiled_archs == () and report.devices == ()


def test_cpu_build_with_sm70_required_fails_clearly():
    with pytest.raises(gpu.GpuArchError) as err:
        gpu.check_gpu_arch("sm_70", torch_module=fake_torch("2.13.0+cpu", None, []))
    msg = str(err.value)
    assert "CPU-only" in msg and "sm_70" in msg and "whl/cu126" in msg and "torch==2.13.0 " in msg


def test_cuda13_build_lacks_volta():
    with pytest.raises(gpu.GpuArchError) as err:
        gpu.check_gpu_arch("sm_70", torch_module=fake_torch("2.13.0+cu130", "13.0", CU130))
    msg = str(err.value)
    assert "not for sm_70" in msg and "no kernel image is available" in msg
    assert "cu126" in msg and "pytorch/pytorch#172352" in msg


def test_cu126_build_has_volta_and_runs_on_a_v100():
    torch = fake_torch(devices=[("Tesla V100-SXM2-16GB", (7, 0))])
    report = gpu.check_gpu_arch("sm_70", require_device=True, torch_module=torch)
    assert report.required == ("sm_70",)
    assert report.devices == ({"index": 0, "name": "Tesla V100-SXM2-16GB", "arch": "sm_70"},)
    assert "sm_70" in report.compiled_archs


def test_visible_volta_device_is_checked_even_without_requirement():
    torch = fake_torch("2.13.0+cu130", "13.0", CU130, devices=[("Tesla V100-PCIE-32GB", (7, 0))])
    with pytest.raises(gpu.GpuArchError, match=r"GPU 0 \(Tesla V100-PCIE-32GB, sm_70\)"):
        gpu.check_gpu_arch(torch_module=torch)


def test_newer_gpus_pass_with_cuda13():
    torch = fake_torch("2.13.0+cu130", "13.0", CU130, devices=[("NVIDIA H100", (9, 0)), ("L4", (8, 9))])
    report = gpu.check_gpu_arch(torch_module=torch)
    assert [d["arch"] for d in report.devices] == ["sm_90", "sm_89"]  # sm_89 runs sm_86 cubins


@pytest.mark.parametrize(
    "cap, archs, ok",
    [
        ((7, 0), ["sm_70"], True),
        ((7, 0), ["sm_75"], False),  # no cubin compatibility downwards
        ((8, 6), ["sm_80"], True),  # same major, higher minor
        ((9, 0), ["sm_80"], False),  # different major, no PTX
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX JIT upwards
        ((7, 0), ["compute_75"], False),
        ((12, 0), ["compute_120"], True),
        ((7, 0), ["bogus"], False),
    ],
)
def test_kernel_available(cap, archs, ok):
    assert gpu.kernel_available(cap, archs) is ok


def test_requirement_from_environment(monkeypatch):
    monkeypatch.setenv(gpu.REQUIRED_ARCH_ENV, "sm_70")
    with pytest.raises(gpu.GpuArchError):
        gpu.check_gpu_arch(torch_module=fake_torch("2.13.0+cu130", "13.0", CU130))
    assert gpu.check_gpu_arch(torch_module=fake_torch()).required == ("sm_70",)
    # an explicit empty requirement overrides the environment
    assert gpu.check_gpu_arch("", torch_module=fake_torch("2.13.0+cu130", "13.0", CU130)).required == ()


def test_arch_spellings():
    assert gpu._parse_archs("7.0, sm_75,,80") == ("sm_70", "sm_75", "sm_80")
    assert gpu._parse_archs(["sm_70"]) == ("sm_70",)
    assert gpu._parse_archs(None) == ()


def test_require_device(monkeypatch):
    with pytest.raises(gpu.GpuArchError, match="no CUDA device is visible"):
        gpu.check_gpu_arch(require_device=True, torch_module=fake_torch())
    monkeypatch.setenv(gpu.REQUIRE_DEVICE_ENV, "1")
    with pytest.raises(gpu.GpuArchError, match="nvidia.com/gpu"):
        gpu.check_gpu_arch(torch_module=fake_torch())


def test_cli(monkeypatch, capsys):
    monkeypatch.setattr(gpu, "_import_torch", lambda: fake_torch(devices=[("V100", (7, 0))]))
    assert gpu.main(["--require", "sm_70", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["required"] == ["sm_70"] and report["devices"][0]["arch"] == "sm_70"
    assert gpu.main(["--quiet"]) == 0 and capsys.readouterr().out == ""
    monkeypatch.setattr(gpu, "_import_torch", lambda: fake_torch("2.13.0+cu130", "13.0", CU130))
    assert gpu.main(["--require", "sm_70"]) == 1
    assert "ser.ops.gpu: ERROR:" in capsys.readouterr().err


def test_real_torch_of_this_venv():
    """The installed torch answers the same questions (CPU wheel here, GPU on a GPU box)."""
    import torch

    report = gpu.check_gpu_arch("")
    assert report.torch_version == torch.__version__
    assert list(report.compiled_archs) == torch.cuda.get_arch_list()


def test_scheduling_constants_match_gfd_labels():
    assert gpu.V100_NODE_SELECTOR == {"nvidia.com/gpu.family": "volta"}
    assert gpu.GPU_TOLERATIONS[0]["key"] == gpu.GPU_RESOURCE == "nvidia.com/gpu"
