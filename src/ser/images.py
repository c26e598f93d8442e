"""Default container images of the project (built from images/, see images/README.md).

The pipelines' base-image parameters default to these tags, the manifests under
manifests/ use the same strings (tests/test_manifests.py keeps them equal), and
``make images`` tags its builds with them (``python src/ser/images.py``).

The tag is the package version: bump both together.  This module imports nothing
from ``ser`` so that it also runs as a plain script.
"""

from __future__ import annotations

import sys

REGISTRY = "ghcr.io/ser-project"
VERSION = "0.1.0"

#: CPU image: `ser` + torch CPU wheel; pipeline steps without a GPU, MLflow server.
CPU_IMAGE = f"{REGISTRY}/ser-cpu:{VERSION}"
#: V100 (Volta, sm_70) image: `ser` + torch CUDA 12.6 wheel; GPU training steps.
GPU_IMAGE = f"{REGISTRY}/ser-gpu-v100:{VERSION}"
#: TorchServe 0.12 (Java 17) + `ser` + torch CPU wheel; KServe predictor.
SERVE_IMAGE = f"{REGISTRY}/ser-serve:{VERSION}"
#: The same serving image on the torch CUDA 12.6 wheel (sm_70); overlay gpu-v100.
SERVE_GPU_IMAGE = f"{REGISTRY}/ser-serve-gpu-v100:{VERSION}"

#: name -> (image, Dockerfile, docker build args), the order `make images` builds them in.
IMAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cpu": (CPU_IMAGE, "images/Dockerfile.cpu", ()),
    "gpu-v100": (GPU_IMAGE, "images/Dockerfile.gpu-v100", ()),
    "serve": (SERVE_IMAGE, "images/Dockerfile.serve", ()),
    "serve-gpu-v100": (
        SERVE_GPU_IMAGE,
        "images/Dockerfile.serve",
        (
            "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126",
            "REQUIRED_CUDA_ARCH=sm_70",
        ),
    ),
}


def main(argv: list[str] | None = None) -> int:
    """``images.py``: one ``docker build`` argument line per image; ``images.py NAME``: its tag."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        if args[0] not in IMAGES:
            print(f"unknown image {args[0]!r}; known: {', '.join(IMAGES)}", file=sys.stderr)
            return 2
        print(IMAGES[args[0]][0])
        return 0
    for image, dockerfile, build_args in IMAGES.values():
        extra = "".join(f" --build-arg {arg}" for arg in build_args)
        print(f"-f {dockerfile} -t {image}{extra}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
