"""Start-up guard for CUDA images: does this torch build carry kernels for this GPU?

Why it exists: the V100 node pool is Volta (compute capability 7.0, ``sm_70``).
CUDA 13 dropped Volta, and PyTorch 2.11 removed ``sm_70`` from its CUDA 12.8
wheels too (pytorch/pytorch#172352, "Deprecate sm70, Volta architecture for CUDA
12.8 build in PyTorch 2.11 release"; RELEASE.md support matrix of 2.11-2.14): only
the CUDA 12.6 wheels (``+cu126``) still list Volta.  A torch build without
``sm_70`` imports fine and only fails at the first CUDA op with "no kernel image
is available for execution on the device".  :func:`check_gpu_arch` turns that into
a clear error at start-up.

Where it is called:
- the V100 image sets ``SER_REQUIRED_CUDA_ARCH=sm_70`` and runs ``python -m ser.ops.gpu``
  at build time (no GPU needed: the arch list is compiled in) and in its entrypoint;
- KFP components replace the image entrypoint (Kubernetes ``command``), so a
  component that may run on a GPU calls ``ser.ops.gpu.check_gpu_arch()`` first.  With no
  requirement in the environment (the CPU image) it only reports.

This module imports torch lazily and nothing else from ``ser``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

#: Volta, the V100's architecture.
V100_ARCH = "sm_70"
#: Comma-separated architectures the running torch build must list (set by the V100 image).
REQUIRED_ARCH_ENV = "SER_REQUIRED_CUDA_ARCH"
#: "1" makes the check fail when no CUDA device is visible (set on GPU pods).
REQUIRE_DEVICE_ENV = "SER_REQUIRE_GPU_DEVICE"

#: Kubernetes scheduling for the V100 node pool, shared by the pipelines
#: (kfp-kubernetes) and manifests/overlays/gpu-v100 (a test keeps them equal).
#: ``nvidia.com/gpu.family`` is set by NVIDIA GPU Feature Discovery (GPU operator).
GPU_RESOURCE = "nvidia.com/gpu"
V100_NODE_SELECTOR: dict[str, str] = {"nvidia.com/gpu.family": "volta"}
GPU_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)

#: Where a torch build that still ships sm_70 comes from (see module docstring).
VOLTA_WHEEL_INDEX = "https://download.pytorch.org/whl/cu126"


class GpuArchError(RuntimeError):
    """The torch build cannot run kernels on the required or present GPU."""


@dataclass(frozen=True)
class GpuReport:
    torch_version: str
    cuda_version: str | None
    compiled_archs: tuple[str, ...]
    required: tuple[str, ...]
    devices: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_archs(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item[0].isdigit():  # "7.0" or "70" -> "sm_70"
            item = "sm_" + item.replace(".", "")
        out.append(item)
    return tuple(out)


def compiled_arch_list(torch_module: Any = None) -> list[str]:
    """Architectures this torch build has kernels (sm_XY) or PTX (compute_XY) for.

    ``torch.cuda.get_arch_list()`` reads the list compiled into the wheel, so it
    answers without a GPU (at image build time); CPU builds answer ``[]``.
    """
    torch = torch_module if torch_module is not None else _import_torch()
    return [str(a) for a in torch.cuda.get_arch_list()]


def _import_torch() -> Any:
    import torch

    return torch


def _arch_number(arch: str) -> int | None:
    try:
        return int(arch.split("_", 1)[1])
    except (IndexError, ValueError):
        return None


def kernel_available(capability: tuple[int, int], archs: Iterable[str]) -> bool:
    """Can a device of this compute capability run this build's kernels?

    A cubin ``sm_XY`` runs on devices X.Z with Z >= Y (same major); PTX
    ``compute_XY`` is JIT-compiled for any device >= X.Y.
    """
    major, minor = capability
    dev = major * 10 + minor
    for arch in archs:
        num = _arch_number(arch)
        if num is None:
            continue
        if arch.startswith("sm_") and num // 10 == major and num % 10 <= minor:
            return True
        if arch.startswith("compute_") and num <= dev:
            return True
    return False


def _advice(torch_version: str) -> str:
    base = torch_version.split("+", 1)[0]
    return (
        "Volta (V100, sm_70) needs a torch build whose CUDA flavour still ships sm_70 "
        "kernels: the CUDA 12.6 wheels "
        f"(pip install torch=={base} --index-url {VOLTA_WHEEL_INDEX}), i.e. the image "
        "built from images/Dockerfile.gpu-v100. CUDA 13 builds never had Volta and "
        "CUDA 12.8 builds dropped it in torch 2.11 (pytorch/pytorch#172352)."
    )


def check_gpu_arch(
    required: str | Iterable[str] | None = None,
    *,
    require_device: bool | None = None,
    torch_module: Any = None,
) -> GpuReport:
    """Fail early, with a clear message, when torch cannot run on the GPU it needs.

    ``required``: architectures the build must list, e.g. ``"sm_70"``; None reads
    ``$SER_REQUIRED_CUDA_ARCH`` (unset or empty: no requirement).
    ``require_device``: fail if no CUDA device is visible; None reads
    ``$SER_REQUIRE_GPU_DEVICE``.
    Every visible device is also checked against the compiled list.
    Returns a :class:`GpuReport`; raises :class:`GpuArchError`.
    """
    torch = torch_module if torch_module is not None else _import_torch()
    if required is None:
        required = os.environ.get(REQUIRED_ARCH_ENV, "")
    if require_device is None:
        require_device = os.environ.get(REQUIRE_DEVICE_ENV, "").strip().lower() in {"1", "true", "yes"}
    need = _parse_archs(required)
    version = str(torch.__version__)
    cuda = getattr(torch.version, "cuda", None)
    archs = compiled_arch_list(torch)

    if need and not cuda:
        raise GpuArchError(
            f"torch {version} is a CPU-only build, but {', '.join(need)} is required "
            f"(${REQUIRED_ARCH_ENV}). " + _advice(version)
        )
    missing = [a for a in need if a not in archs]
    if missing:
        raise GpuArchError(
            f"torch {version} (CUDA {cuda}) ships kernels for {' '.join(archs) or 'no architecture'} "
            f"but not for {' '.join(missing)}: every CUDA op would fail with "
            "'no kernel image is available for execution on the device'. " + _advice(version)
        )

    devices: list[dict[str, Any]] = []
    available = bool(cuda) and bool(torch.cuda.is_available())
    if available:
        for index in range(torch.cuda.device_count()):
            cap = tuple(torch.cuda.get_device_capability(index))
            name = str(torch.cuda.get_device_name(index))
            arch = f"sm_{cap[0]}{cap[1]}"
            devices.append({"index": index, "name": name, "arch": arch})
            if not kernel_available(cap, archs):  # type: ignore[arg-type]
                raise GpuArchError(
                    f"GPU {index} ({name}, {arch}) has no kernels in torch {version} "
                    f"(CUDA {cuda}), which ships {' '.join(archs)}. "
                    + (_advice(version) if cap < (7, 5) else "Use a torch build that lists it.")
                )
    if require_device and not devices:
        raise GpuArchError(
            f"no CUDA device is visible to torch {version} (CUDA {cuda}): is the pod "
            f"scheduled with a {GPU_RESOURCE} limit on a node with the NVIDIA device "
            "plugin, and does the node driver support this CUDA version?"
        )
    return GpuReport(
        torch_version=version,
        cuda_version=cuda,
        compiled_archs=tuple(archs),
        required=need,
        devices=tuple(devices),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ser.ops.gpu",
        description="Check that this torch build has kernels for the required/present GPUs.",
    )
    parser.add_argument(
        "--require",
        default=None,
        help=f"comma-separated architectures, e.g. {V100_ARCH} (default: ${REQUIRED_ARCH_ENV})",
    )
    parser.add_argument(
        "--require-device",
        action="store_true",
        default=None,
        help=f"fail when no CUDA device is visible (default: ${REQUIRE_DEVICE_ENV})",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="print nothing unless the check fails")
    args = parser.parse_args(argv)
    try:
        report = check_gpu_arch(args.require, require_device=args.require_device)
    except GpuArchError as exc:
        print(f"ser.ops.gpu: ERROR: {exc}", file=sys.stderr)
        return 1
    if args.quiet:
        return 0
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        devs = ", ".join(f"{d['index']}:{d['name']}({d['arch']})" for d in report.devices) or "none visible"
        print(
            f"ser.ops.gpu: OK torch {report.torch_version} cuda={report.cuda_version} "
            f"archs=[{' '.join(report.compiled_archs)}] required=[{' '.join(report.required)}] "
            f"devices={devs}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
