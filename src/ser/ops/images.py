"""Default container images of the project (built from images/, see images/README.md).

The pipelines' base-image parameters default to these tags, the manifests under
manifests/ use the same strings (tests/test_manifests.py keeps them equal), and
``make images`` tags its builds with them (``python src/ser/ops/images.py``).

The tag is the package version: bump both together.  This module imports nothing
from ``ser`` so that it also runs as a plain script.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time

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

#: The whisper recipe's images: the CPU and serving images with the ``encoder`` extra
#: (faster-whisper, CTranslate2, the whisper-base files: ~0.3 GB more); the CNN images
#: above never carry it.
CPU_ENCODER_IMAGE = f"{REGISTRY}/ser-cpu-encoder:{VERSION}"
SERVE_ENCODER_IMAGE = f"{REGISTRY}/ser-serve-encoder:{VERSION}"

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
    "cpu-encoder": (CPU_ENCODER_IMAGE, "images/Dockerfile.cpu", ("SER_EXTRAS=[encoder]",)),
    "serve-encoder": (SERVE_ENCODER_IMAGE, "images/Dockerfile.serve", ("SER_EXTRAS=[encoder]",)),
}


#: Where a base image made from Debian's packages lands (images/base-debian.sh).
DEBIAN_PYTHON_IMAGE = "localhost/ser-python:3.11-bookworm"
#: buildah without a daemon: vfs storage (no overlay mounts in containers) and chroot
#: isolation (no user namespaces needed), as it runs on this project's dev machines.
BUILDAH = ("buildah", "--storage-driver", "vfs")


def detect_builder() -> str | None:
    """``docker`` when a Docker daemon answers, else ``buildah`` when installed, else None.

    A docker client without a daemon (common on CI runners and in containers) does not
    count: ``docker build`` would fail only after the context upload.
    """
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if probe.returncode == 0:
            return "docker"
    if shutil.which("buildah"):
        return "buildah"
    return None


def build_argv(name: str, builder: str, python_image: str | None = None, torch_index_url: str | None = None,
               torch_find_links: str | None = None, ca_bundle: str | None = None) -> list[str]:
    """The command that builds image ``name`` from the repository root with ``builder``.

    ``python_image`` replaces the Dockerfile's PYTHON_IMAGE base (a local Debian base where
    the public one cannot be pulled); ``torch_find_links`` is a folder of wheels mounted
    read-only into the build and searched before ``torch_index_url``; ``ca_bundle`` is a
    host CA file mounted over the build's system bundle (a network whose HTTPS proxy signs
    with its own CA), for RUN steps only: it is not stored in the image.
    """
    if name not in IMAGES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
    image, dockerfile, build_args = IMAGES[name]
    args = list(build_args)
    if python_image:
        args.append(f"PYTHON_IMAGE={python_image}")
    if torch_index_url and not any(a.startswith("TORCH_INDEX_URL=") for a in build_args):
        args.append(f"TORCH_INDEX_URL={torch_index_url}")
    if builder == "docker":
        argv = ["docker", "build"]
        if torch_find_links:
            raise ValueError("torch_find_links needs buildah (docker build cannot mount a host folder)")
        if ca_bundle:
            raise ValueError("ca_bundle needs buildah (docker build cannot mount a host file)")
    elif builder == "buildah":
        # No --layers: on vfs every committed step is a full copy of the image's tree (a
        # 14-step serving build filled 40 GB here); one commit per stage keeps a build to
        # about twice the image's size, at the price of no step cache between builds.
        argv = [*BUILDAH, "bud", "--isolation", "chroot"]
        if torch_find_links:
            argv += ["-v", f"{torch_find_links}:{torch_find_links}:ro"]
            args.append(f"TORCH_FIND_LINKS={torch_find_links}")
        if ca_bundle:
            argv += ["-v", f"{ca_bundle}:/etc/ssl/certs/ca-certificates.crt:ro"]
    else:
        raise ValueError(f"unknown builder {builder!r} (docker or buildah)")
    argv += ["-f", dockerfile, "-t", image]
    for arg in args:
        argv += ["--build-arg", arg]
    return [*argv, "."]


def parse_size(text: str) -> int:
    """Bytes of a size as buildah prints it ("2.46 GB", "207 MB": decimal units)."""
    number, _, unit = text.strip().partition(" ")
    scale = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit.strip().upper()]
    return int(float(number) * scale)


def image_size(image: str, builder: str) -> int | None:
    """Bytes of a local image, None if the builder does not know it."""
    if builder == "buildah":
        proc = subprocess.run([*BUILDAH, "images", "--json", image], capture_output=True, text=True, check=False)
        rows = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
        return parse_size(str(rows[0]["size"])) if rows else None
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                          capture_output=True, text=True, check=False)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


def prune_buildah() -> None:
    """Drop what earlier builds left on buildah's vfs storage: working containers of failed
    builds and dangling images (the image a rebuilt tag replaced). Each holds full copies
    of an image's files, so a few rebuilds would otherwise fill the disk."""
    subprocess.run([*BUILDAH, "rm", "--all"], capture_output=True, check=False)
    subprocess.run([*BUILDAH, "rmi", "--prune"], capture_output=True, check=False)


def build(names: list[str], builder: str, report: str | None = None, **options: str | None) -> int:
    """Build ``names`` one after the other; print and (optionally) save time and size of each."""
    rows = []
    if builder == "buildah":
        prune_buildah()
    for name in names:
        argv = build_argv(name, builder, **options)
        print("+ " + shlex.join(argv), flush=True)
        started = time.monotonic()
        code = subprocess.run(argv, check=False).returncode
        seconds = time.monotonic() - started
        if code != 0:
            print(f"building {name} failed with status {code} after {seconds:.0f} s", file=sys.stderr)
            return code
        size = image_size(IMAGES[name][0], builder)
        if builder == "buildah":
            prune_buildah()
        rows.append({"image": name, "tag": IMAGES[name][0], "build_s": round(seconds, 1), "bytes": size})
    print(f"\n{'image':<16} {'build s':>8} {'size MB':>8}")
    for row in rows:
        mb = f"{row['bytes'] / 1e6:.0f}" if row["bytes"] else "?"
        print(f"{row['image']:<16} {row['build_s']:>8.0f} {mb:>8}")
    if report:
        from pathlib import Path

        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps({"builder": builder, "images": rows}, indent=2))
    return 0


def kfp_step_argv(pipeline_yaml: str, executor: str, parameters: dict, output_dir: str) -> list[str]:
    """The command a KFP launcher runs for ``executor`` of a compiled pipeline, with the
    executor input (``{{$}}``) filled in: ``parameters`` and output files under ``output_dir``.
    Running it in an image proves the image can execute that component as a cluster would."""
    import yaml  # only this check needs PyYAML; the build path stays on the standard library

    spec = next(iter(yaml.safe_load_all(open(pipeline_yaml, encoding="utf-8"))))
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    outputs = {"parameters": {"Output": {"outputFile": f"{output_dir}/Output"}}, "outputFile": f"{output_dir}/executor_output.json"}
    executor_input = json.dumps({"inputs": {"parameterValues": parameters}, "outputs": outputs})
    return [*container["command"], *[executor_input if a == "{{$}}" else a for a in container["args"]]]


def _run_in(ctr: str, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``argv`` in the buildah working container ``ctr``."""
    return subprocess.run([*BUILDAH, "run", "--isolation", "chroot", ctr, "--", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def check_images(pipeline_yaml: str, port: int) -> list[tuple[str, bool, str]]:
    """Run the built CPU and serving images (buildah): the CLI, a pipeline component as
    KFP's launcher calls it, and TorchServe answering on ``port``. (check, passed, detail).

    One working container per image: on vfs storage each ``buildah from`` copies the
    whole image (2.5 GB, minutes on 2 cores), and the CPU checks leave nothing behind
    that another would see but /tmp/kfp-outputs."""
    import urllib.request

    results = []
    print(f"images-check: a working container of {CPU_IMAGE} (vfs copies the image: minutes) ...", flush=True)
    ctr = subprocess.run([*BUILDAH, "from", "--quiet", CPU_IMAGE], capture_output=True, text=True, check=True).stdout.strip()
    try:
        proc = _run_in(ctr, ["ser", "--version"])
        results.append(("cpu: ser --version", proc.stdout.strip() == f"ser {VERSION}", (proc.stdout + proc.stderr).strip()[-300:]))
        proc = _run_in(ctr, ["ser", "--help"])
        results.append(("cpu: ser --help", proc.returncode == 0 and "COMMAND" in proc.stdout, proc.stderr.strip()[-300:]))
        argv = kfp_step_argv(pipeline_yaml, "exec-mlflow-run", {"name": "images-check", "mlflow_uri": "", "mlflow_experiment": "check"},
                             "/tmp/kfp-outputs")
        proc = _run_in(ctr, ["sh", "-c", 'mkdir -p /tmp/kfp-outputs && "$@" && cat /tmp/kfp-outputs/executor_output.json', "sh", *argv])
        ok = proc.returncode == 0 and "MLflow parent run: (tracking off)" in proc.stdout and '"Output"' in proc.stdout
        results.append(("cpu: KFP step mlflow-run via kfp.dsl.executor_main", ok, (proc.stdout + proc.stderr).strip()[-400:]))
    finally:
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True, check=False)
    print(f"images-check: a working container of {SERVE_IMAGE} ...", flush=True)
    ctr = subprocess.run([*BUILDAH, "from", "--quiet", SERVE_IMAGE], capture_output=True, text=True, check=True).stdout.strip()
    config = (f"inference_address=http://127.0.0.1:{port}\\nmanagement_address=http://127.0.0.1:{port + 1}\\n"
              f"metrics_address=http://127.0.0.1:{port + 2}\\n")
    server = subprocess.Popen([*BUILDAH, "run", "--isolation", "chroot", ctr, "--", "sh", "-c",
                               f'printf "{config}" > /tmp/ts.properties && exec torchserve --start --foreground --ncs '
                               "--disable-token-auth --model-store /tmp --ts-config /tmp/ts.properties"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    answer, deadline = "", time.monotonic() + 180
    try:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(1)
    finally:
        import os
        import signal

        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        log = server.stdout.read() if server.stdout else ""
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True, check=False)
    results.append(("serve: TorchServe answers GET /ping", '"Healthy"' in answer, answer.strip() or log[-400:]))
    return results


def main(argv: list[str] | None = None) -> int:
    """``images.py``: one ``docker build`` argument line per image; ``images.py NAME``: its tag;
    ``images.py build [NAME ...]``: build them with Docker or buildah (``--help``)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("build", "builder"):
        return _build_cli(args)
    if args and args[0] == "check":
        if len(args) != 3 or not args[2].isdigit():
            print("usage: images.py check COMPILED_PIPELINE_YAML PORT", file=sys.stderr)
            return 2
        results = check_images(args[1], int(args[2]))
        for name, ok, detail in results:
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f"\n     {detail}"))
        return 0 if all(ok for _n, ok, _d in results) else 1
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


def _build_cli(args: list[str]) -> int:
    if args[0] == "builder":
        found = detect_builder()
        print(found or "")
        return 0 if found else 1
    parser = argparse.ArgumentParser(prog="images.py build", description="Build the project's images with Docker "
                                     "(when a daemon answers) or buildah (vfs storage, chroot isolation).")
    parser.add_argument("names", nargs="*", default=list(IMAGES), help=f"images to build (default all: {', '.join(IMAGES)})")
    parser.add_argument("--builder", choices=("docker", "buildah"), default=None,
                        help="default: docker if its daemon answers, else buildah")
    parser.add_argument("--python-image", default=None,
                        help=f"base image instead of the Dockerfiles' default (e.g. {DEBIAN_PYTHON_IMAGE} from images/base-debian.sh)")
    parser.add_argument("--torch-index-url", default=None, help="index of the torch wheel (CPU images)")
    parser.add_argument("--torch-find-links", default=None, help="folder of local wheels searched first (buildah only)")
    parser.add_argument("--ca-bundle", default=None,
                        help="host CA bundle for the build's HTTPS (behind a TLS-intercepting proxy; buildah only)")
    parser.add_argument("--report", default=None, help="write build times and sizes as JSON here")
    ns = parser.parse_args(args[1:])
    builder = ns.builder or detect_builder()
    if builder is None:
        print("building images needs Docker with a running daemon, or buildah "
              "(Debian/Ubuntu: apt-get install -y buildah); neither was found", file=sys.stderr)
        return 3
    unknown = [n for n in ns.names if n not in IMAGES]
    if unknown:
        print(f"unknown image {unknown[0]!r}; known: {', '.join(IMAGES)}", file=sys.stderr)
        return 2
    try:
        return build(ns.names, builder, report=ns.report, python_image=ns.python_image,
                     torch_index_url=ns.torch_index_url, torch_find_links=ns.torch_find_links,
                     ca_bundle=ns.ca_bundle)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
