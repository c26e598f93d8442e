"""images/: static checks of the Dockerfiles (no Docker here) and of their scripts.

Pinned bases, multi-stage builds, a non-root runtime user, torch pinned as in
pyproject.toml, a V100 image on a CUDA flavour whose torch build lists sm_70 with a
start-up check, the Java 17 serving image; the entrypoints run for real with stubs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ser.ops import gpu, images

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "images"
DOCKERFILES = {
    "cpu": IMAGES_DIR / "Dockerfile.cpu",
    "gpu-v100": IMAGES_DIR / "Dockerfile.gpu-v100",
    "serve": IMAGES_DIR / "Dockerfile.serve",
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_pin(name: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}==([\w.+-]+)", dep.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


# --------------------------------------------------------------------- a tiny parser
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def arg_defaults(path: Path) -> dict[str, str]:
    """Default of every ARG (the last one wins: the same ARG may repeat per stage)."""
    defaults: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            defaults[key.strip()] = value.strip().strip('"')
    return defaults


def resolve(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)


def stages(path: Path) -> list[tuple[str, str | None]]:
    """(base image resolved with ARG defaults, stage name) per FROM."""
    defaults = arg_defaults(path)
    out = []
    for word, rest in instructions(path):
        if word == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            out.append((resolve(parts[0], defaults), name))
    return out


def last_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    start = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[start:]


# -------------------------------------------------------------------------- checks
def test_image_constants_follow_the_package_version():
    assert images.VERSION == PYPROJECT["project"]["version"]
    for name, (image, dockerfile, _args) in images.IMAGES.items():
        assert re.fullmatch(r"[a-z0-9.-]+(/[a-z0-9._-]+)+:[\w.-]+", image), image
        assert image.endswith(":" + images.VERSION) and not image.endswith(":latest")
        assert (REPO / dockerfile).is_file(), dockerfile
    assert images.IMAGES["cpu"][0] == images.CPU_IMAGE
    assert images.IMAGES["gpu-v100"][0] == images.GPU_IMAGE
    assert images.IMAGES["serve"][0] == images.SERVE_IMAGE


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_bases_are_pinned(kind):
    for base, _ in stages(DOCKERFILES[kind]):
        if "@sha256:" in base:
            assert re.search(r"@sha256:[0-9a-f]{64}$", base), base
            continue
        assert ":" in base, f"{kind}: base {base} has no tag"
        tag = base.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{kind}: base {base} is not a full version tag"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_multi_stage(kind):
    st = stages(DOCKERFILES[kind])
    assert len(st) >= 2, f"{kind}: single stage"
    names = [n for _, n in st if n]
    text = DOCKERFILES[kind].read_text()
    assert any(f"--from={n}" in text for n in names), f"{kind}: the runtime copies nothing from a build stage"
    # the build tools stay behind: pip installs happen in the builder only
    assert not any(w == "RUN" and "pip install" in r for w, r in last_stage(DOCKERFILES[kind]))


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_runtime_user_is_not_root(kind):
    users = [r for w, r in last_stage(DOCKERFILES[kind]) if w == "USER"]
    assert users, f"{kind}: no USER in the runtime stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{kind}: runs as root"
    # numeric, so Kubernetes runAsNonRoot can verify it; the manifests use the same uid
    assert user.isdigit() and int(user) >= 1000
    assert f"--uid {user}" in DOCKERFILES[kind].read_text()


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_torch_and_pip_pins(kind):
    defaults = arg_defaults(DOCKERFILES[kind])
    assert defaults["TORCH_VERSION"] == pyproject_pin("torch"), f"{kind}: torch pin differs from pyproject.toml"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", defaults["PIP_VERSION"])
    text = DOCKERFILES[kind].read_text()
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}[^"]*" --index-url "\$\{TORCH_INDEX_URL\}"', text)
    # the installed torch build is held while `ser` and its pins go in
    assert re.search(r'--constraint /opt/torch-constraint.txt "?\.', text)
    assert "COPY pyproject.toml" in text and "COPY src" in text


def test_only_the_encoder_images_carry_the_encoder_extra():
    from ser.ops import images

    for name, (_, dockerfile, build_args) in images.IMAGES.items():
        extras = [a for a in build_args if a.startswith("SER_EXTRAS=")]
        assert extras == (["SER_EXTRAS=[encoder]"] if name.endswith("-encoder") else []), name
        if name.endswith("-encoder"):
            assert arg_defaults(REPO / dockerfile)["SER_EXTRAS"] == ""


def test_cpu_images_use_the_cpu_wheel():
    for kind in ("cpu", "serve"):
        assert arg_defaults(DOCKERFILES[kind])["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_gpu_image_ships_sm70():
    path = DOCKERFILES["gpu-v100"]
    d = arg_defaults(path)
    flavour = d["TORCH_CUDA"]
    # The wheel index is the one ser.ops.gpu names as still shipping sm_70 (its docstring
    # gives the torch release history); a flavour without Volta kernels fails here.
    assert resolve(d["TORCH_INDEX_URL"], d) == gpu.VOLTA_WHEEL_INDEX == f"https://download.pytorch.org/whl/{flavour}", (
        f"torch {d['TORCH_VERSION']}+{flavour} is not the wheel ser.ops.gpu names for sm_70: V100 pods would fail"
    )
    text = path.read_text()
    # the exact local version, so no other build can satisfy the pin
    assert 'pip install "torch==${TORCH_VERSION}+${TORCH_CUDA}"' in text
    assert d["REQUIRED_CUDA_ARCH"] == "sm_70"
    # fails the build without sm_70 ...
    assert any(w == "RUN" and 'python -m ser.ops.gpu --require "${REQUIRED_CUDA_ARCH}"' in r for w, r in instructions(path))
    # ... and checks again at start-up through the entrypoint and the env it sets
    runtime = last_stage(path)
    envs = " ".join(r for w, r in runtime if w == "ENV")
    assert "SER_REQUIRED_CUDA_ARCH=${REQUIRED_CUDA_ARCH}" in envs
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in envs
    assert any(w == "ENTRYPOINT" and "ser-entrypoint" in r for w, r in runtime)
    # the reason is cited where the choice is made
    assert "pytorch/pytorch#172352" in text and "CUDA 13" in text


def test_serving_image():
    path = DOCKERFILES["serve"]
    text = path.read_text()
    assert pyproject_pin("torchserve") == "0.12.0" and pyproject_pin("torch-model-archiver") == "0.12.0"
    runtime = " ".join(r for w, r in last_stage(path) if w == "RUN")
    assert "openjdk-17-jre-headless" in runtime, "TorchServe 0.12 needs Java 17 in the runtime stage"
    assert "ENTRYPOINT [\"/usr/local/bin/ser-serve\"]" in text
    assert "EXPOSE 8080 8082" in text
    # the V100 serving variant is this file with the cu126 wheel and the sm_70 guard
    _image, dockerfile, args = images.IMAGES["serve-gpu-v100"]
    assert dockerfile == "images/Dockerfile.serve"
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" in args
    assert "REQUIRED_CUDA_ARCH=sm_70" in args
    assert args[0] == f"TORCH_INDEX_URL={gpu.VOLTA_WHEEL_INDEX}"  # the wheel ser.ops.gpu names for sm_70


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_small_build_context(kind):
    ignore = DOCKERFILES[kind].with_name(DOCKERFILES[kind].name + ".dockerignore")
    lines = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "everything is excluded, then what the image needs"
    for path in re.findall(r"^COPY (?!--from)(?:--chmod=\S+ )?(\S+)", DOCKERFILES[kind].read_text(), re.M):
        assert f"!{path}" in lines or f"!{path}/" in lines, f"{kind}: {path} is COPY'd but ignored"


def test_make_fragment():
    text = (REPO / "mk" / "images.mk").read_text()
    for target in ("images:", "manifests:", "push-images:"):
        assert re.search(rf"^{target}", text, re.M), target
    assert "Docker" in text  # documented as needing Docker
    proc = subprocess.run([sys.executable, str(REPO / "src" / "ser" / "ops" / "images.py")], capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == len(images.IMAGES)
    for line, (image, dockerfile, args) in zip(lines, images.IMAGES.values()):
        words = shlex.split(line)
        assert words[:4] == ["-f", dockerfile, "-t", image]
        assert words[4:] == [w for a in args for w in ("--build-arg", a)]


# ----------------------------------------------------------------- entrypoint scripts
SCRIPTS = [IMAGES_DIR / "entrypoint.sh", IMAGES_DIR / "serve-entrypoint.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_executable(script):
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    assert script.read_text().startswith("#!/bin/sh\n")
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _env(tmp_path: Path, stub_python: bool = False, **extra: str) -> dict[str, str]:
    """PATH with a stub `torchserve` that records its call, then this venv's python
    (or a stub `python`, where the real GPU check is not what is tested: it costs a
    torch import, and test_entrypoint_* run it for real)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "torchserve"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_ARGS"\n')
    stub.chmod(0o755)
    if stub_python:
        (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SER_")}
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["STUB_ARGS"] = str(tmp_path / "args.txt")
    env.update(extra)
    return env


def test_entrypoint_runs_the_command_after_the_check(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run(["sh", str(SCRIPTS[0]), "echo", "hello"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr


def test_entrypoint_fails_clearly_without_sm70(tmp_path):
    # this venv has the CPU wheel: exactly the mistake the V100 image guards against
    env = _env(tmp_path, SER_REQUIRED_CUDA_ARCH="sm_70")
    proc = subprocess.run(["sh", str(SCRIPTS[0]), "echo", "never"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "never" not in proc.stdout
    assert "sm_70" in proc.stderr and "cu126" in proc.stderr


def test_serve_entrypoint_rewrites_the_archive_config(tmp_path):
    models = tmp_path / "models"
    (models / "model-store").mkdir(parents=True)
    (models / "config").mkdir()
    (models / "model-store" / "ser-english.mar").write_bytes(b"PK")
    (models / "config" / "config.properties").write_text(
        "inference_address=http://127.0.0.1:8085\n"
        "management_address=http://127.0.0.1:8086\n"
        "metrics_address=http://127.0.0.1:8087\n"
        "metrics_mode=prometheus\n"
        "model_metrics_auto_detect=true\n"
        "load_models=ser-english.mar\n"
    )
    env = _env(tmp_path, stub_python=True, SER_MODEL_DIR=str(models), SER_RUN_DIR=str(tmp_path / "run"))
    proc = subprocess.run(["sh", str(SCRIPTS[1])], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")
    assert {"--start", "--foreground", "--disable-token-auth"} <= set(args)
    assert args[args.index("--model-store") + 1] == str(models / "model-store")
    config = Path(args[args.index("--ts-config") + 1]).read_text()
    props = dict(l.split("=", 1) for l in config.splitlines() if "=" in l and not l.startswith("#"))
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["metrics_mode"] == "prometheus" and props["model_metrics_auto_detect"] == "true"
    assert props["load_models"] == "all" and config.count("inference_address") == 1


def test_serve_entrypoint_without_archive_says_what_is_missing(tmp_path):
    env = _env(tmp_path, stub_python=True, SER_MODEL_DIR=str(tmp_path / "empty"), SER_RUN_DIR=str(tmp_path / "run"))
    proc = subprocess.run(["sh", str(SCRIPTS[1])], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "model-store" in proc.stderr and ".mar" in proc.stderr


def test_serve_entrypoint_passes_other_commands_through(tmp_path):
    proc = subprocess.run(["sh", str(SCRIPTS[1]), "echo", "ok"], env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "ok\n"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (optional lint)")
@pytest.mark.parametrize("kind", DOCKERFILES)
def test_hadolint(kind):
    proc = subprocess.run(["hadolint", "--failure-threshold", "error", str(DOCKERFILES[kind])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_pipeline_code_uses_the_image_constants():
    """A project image tag written out in pipelines/ or components/ must be a current
    constant of src/ser/ops/images.py (better: import it), so that a version bump cannot
    leave a stale default behind."""
    known = {image for image, _dockerfile, _args in images.IMAGES.values()}
    stale = []
    for folder in ("pipelines", "components"):
        for path in sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else []:
            for ref in re.findall(r"ghcr\.io/ser-project/[\w./-]+(?::[\w.-]+)?", path.read_text()):
                if ref not in known:
                    stale.append(f"{path.relative_to(REPO)}: {ref}")
    assert not stale, "image tags that are not in src/ser/ops/images.py:\n" + "\n".join(stale)


# ------------------------------------------------ the build driver (make images / images-check), without building
def test_buildah_build_mounts_the_wheel_folder_and_ca_and_sets_the_base():
    argv = images.build_argv("serve", "buildah", python_image=images.DEBIAN_PYTHON_IMAGE, torch_index_url="https://pypi.org/simple",
                             torch_find_links="/opt/wheels", ca_bundle="/etc/ssl/certs/ca-certificates.crt")
    assert argv[:6] == ["buildah", "--storage-driver", "vfs", "bud", "--isolation", "chroot"] and argv[-1] == "."
    assert ["-v", "/opt/wheels:/opt/wheels:ro"] == argv[argv.index("-v"):argv.index("-v") + 2]
    assert "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro" in argv
    build_args = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-arg"]
    assert build_args == [f"PYTHON_IMAGE={images.DEBIAN_PYTHON_IMAGE}", "TORCH_INDEX_URL=https://pypi.org/simple",
                          "TORCH_FIND_LINKS=/opt/wheels"]
    assert argv[argv.index("-t") + 1] == images.SERVE_IMAGE and argv[argv.index("-f") + 1] == "images/Dockerfile.serve"
    # every build arg the driver sets is declared by the Dockerfile (an undeclared one would be ignored)
    declared = arg_defaults(DOCKERFILES["serve"])
    assert {a.split("=")[0] for a in build_args} <= set(declared)


def test_a_flavour_keeps_its_own_torch_index():
    argv = images.build_argv("serve-gpu-v100", "docker", torch_index_url="https://pypi.org/simple")
    build_args = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-arg"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" in build_args
    assert "TORCH_INDEX_URL=https://pypi.org/simple" not in build_args


def test_docker_cannot_mount_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="needs buildah"):
        images.build_argv("cpu", "docker", torch_find_links="/opt/wheels")
    with pytest.raises(ValueError, match="unknown image 'tpu'"):
        images.build_argv("tpu", "buildah")


def test_build_without_docker_or_buildah_says_what_it_needs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "src/ser/ops/images.py"), "build", "cpu"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PATH": str(tmp_path)}, check=False)
    assert proc.returncode == 3
    assert "needs Docker with a running daemon, or buildah" in proc.stderr and "apt-get install -y buildah" in proc.stderr


def test_the_kfp_step_command_runs_a_component_as_the_launcher_would(tmp_path):
    """The command images-check runs inside the CPU image, run here on the venv instead."""
    from ser.cli import main

    assert main(["pipeline", "compile", "--out", str(tmp_path)]) == 0
    argv = images.kfp_step_argv(str(tmp_path / "ser_study.yaml"), "exec-mlflow-run",
                                {"name": "check", "mlflow_uri": "", "mlflow_experiment": "check"}, str(tmp_path / "out"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(REPO / "src"))
    (tmp_path / "out").mkdir()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MLflow parent run: (tracking off)" in proc.stdout
    written = json.loads((tmp_path / "out" / "executor_output.json").read_text())
    assert written["parameterValues"] == {"Output": ""}  # tracking off: the empty run id, as a cluster step returns it


def test_sizes_as_buildah_prints_them():
    assert images.parse_size("2.46 GB") == 2_460_000_000 and images.parse_size("207 MB") == 207_000_000
    with pytest.raises(KeyError):
        images.parse_size("3 parsecs")


def test_images_check_is_one_command_that_takes_this_machines_wheel_and_ca(tmp_path):
    """`make -n images-check`: base image (only if missing), the two builds with buildah, the
    compiled pipeline, the run checks; the torch wheel folder and CA file come from pip's
    environment (PIP_FIND_LINKS, PIP_CERT / SSL_CERT_FILE) unless given or opted out."""
    if not shutil.which("make"):
        pytest.skip("make not installed")
    wheels, empty = tmp_path / "wheels", tmp_path / "empty"
    wheels.mkdir(), empty.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    ca = tmp_path / "ca.crt"
    ca.write_text("")

    def dry(*args: str, **env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CERT", "SSL_CERT_FILE", "MAKEFLAGS", "MAKELEVEL")}
        proc = subprocess.run(["make", "-n", "--no-print-directory", "images-check", *args], cwd=REPO, capture_output=True,
                              text=True, env={**base, **env})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = dry(PIP_FIND_LINKS=f"{empty} {wheels}", PIP_CERT=str(ca))
    (build,) = [line for line in out.splitlines() if "images.py build" in line]
    assert "build cpu serve --builder buildah --python-image localhost/ser-python:3.11-bookworm" in build
    assert f"--torch-find-links {wheels} " in build and f"--ca-bundle {ca} " in build
    assert "images/base-debian.sh" in out  # made from Debian's packages when buildah does not hold it
    assert "ser pipeline compile --out build/pipelines" in out and "images.py check build/pipelines/ser_study.yaml" in out
    assert out.index("images.py build") < out.index("pipeline compile") < out.index("images.py check")
    plain = dry(PIP_FIND_LINKS=str(empty))  # nothing local: torch from its index, no CA mounted
    assert "--torch-find-links" not in plain and "--ca-bundle" not in plain
    given = dry("TORCH_FIND_LINKS=/w", "CA_BUNDLE=/c.crt", PIP_FIND_LINKS=str(wheels), PIP_CERT=str(ca))
    assert "--torch-find-links /w " in given and "--ca-bundle /c.crt " in given
    off = dry("LOCAL_TORCH_WHEELS=", "HOST_CA_BUNDLE=", PIP_FIND_LINKS=str(wheels), PIP_CERT=str(ca))
    assert "--torch-find-links" not in off and "--ca-bundle" not in off


def test_a_buildah_build_commits_once_per_stage_and_drops_what_earlier_builds_left(tmp_path, monkeypatch):
    """On vfs every committed layer is a full copy: the build runs without --layers, and the
    driver removes leftover working containers and dangling images before and after it."""
    log = tmp_path / "calls"
    fake = tmp_path / "bin" / "buildah"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncase "$*" in *"images --json"*) echo "[{{\\"size\\": \\"2.46 GB\\"}}]";; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    report = tmp_path / "report.json"
    assert images.build(["cpu"], "buildah", report=str(report)) == 0
    calls = log.read_text().splitlines()
    bud = next(i for i, c in enumerate(calls) if " bud " in f" {c} ")
    assert "--layers" not in calls[bud]
    assert any(c.endswith("rmi --prune") for c in calls[:bud]) and any(c.endswith("rm --all") for c in calls[:bud])
    assert any(c.endswith("rmi --prune") for c in calls[bud:])
    assert json.loads(report.read_text())["images"][0]["bytes"] == 2_460_000_000
