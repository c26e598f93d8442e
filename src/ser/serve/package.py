"""Model archives: a training output (model.pt) -> TorchServe .mar -> KServe storage layout.

The .mar holds:

- ``model.pt`` exactly as training wrote it (weights, ArchSpec, labels, and the
  FeatureSpec, so serving extracts the very features the model was trained on), or
  with other test-time speed factors when ``speeds`` is given (the weights unchanged,
  the change recorded in its meta as ``speeds_override``);
- the handler, ``ser/serve/ts_handler.py`` (``serving/handler.py`` subclasses it); it
  imports :mod:`ser.serve.serving`, so the serving image needs ``ser`` installed;
- ``model-config.yaml``: worker count, batch size, max batch delay, response
  timeout, and a ``ser:`` section the handler reads (request limits, torch threads);
- for a model on encoder embeddings (the ``whisper`` recipe), ``encoder/``: the
  encoder files it was trained with (~145 MB for whisper-base), so one archive
  serves without a model hub;
- for the ONNX backends (``--backend onnx`` / ``onnx-int8``), ``model.fp32.onnx`` or
  ``model.int8.onnx``: the network exported (and calibrated) at packaging time,
  stamped with model.pt's SHA-256 (:mod:`ser.serve.inference`).

``kserve_layout`` lays out what KServe's TorchServe runtime expects under its
storageUri: ``config/config.properties`` and ``model-store/<name>.mar``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: The handler that goes into every archive: installed with the package (ser/serve/ts_handler.py),
#: so an image without the source checkout builds the same .mar.
HANDLER = Path(__file__).resolve().with_name("ts_handler.py")
SERIALIZED = "model.pt"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ARCHIVER_LOCK = threading.Lock()


class PackageError(ValueError):
    """A model or option that cannot be packaged, with the reason."""


@dataclass(frozen=True)
class Runtime:
    """How TorchServe runs one model: what ``model-config.yaml`` and ``models=`` carry."""

    workers: int = 2  #: worker processes (one per core is the measured best on 2 cores)
    batch_size: int = 4  #: most requests per handler call (4: +~40% req/s at 16 clients on 2 cores)
    max_batch_delay_ms: int = 1  #: how long the frontend waits to fill a batch (adds <= 1 ms alone)
    response_timeout_s: int = 120
    torch_threads: int = 1  #: intra-op threads per worker
    #: how the network runs (ser.serve.inference.BACKENDS): onnx-int8 = ONNX Runtime, int8
    #: convolutions and linear layers, exported into the archive (measured fastest on 2
    #: cores); onnx = the same in fp32; int8 = PyTorch, int8 linear layers; eager = the reference
    backend: str = "onnx-int8"
    limits: dict[str, Any] = field(default_factory=dict)  #: ser.serve.serving.Limits overrides

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise PackageError("workers must be at least 1")
        if self.batch_size < 1:
            raise PackageError("batch size must be at least 1")
        if self.max_batch_delay_ms < 0:
            raise PackageError("max batch delay must be >= 0 ms")
        from ser.serve.inference import BACKENDS
        from ser.serve.serving import Limits

        if self.backend not in BACKENDS:
            raise PackageError(f"unknown inference backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        try:
            Limits.from_dict(self.limits)
        except (TypeError, ValueError) as exc:
            raise PackageError(str(exc)) from None

    def model_config(self) -> dict[str, Any]:
        """The .mar's model-config.yaml: only the handler's ``ser`` section.

        Worker count and batching are deliberately NOT TorchServe keys here: values in
        model-config.yaml beat config.properties' ``models=`` (checked on 0.12), so a
        server could not override them. They ride along under ``ser.runtime`` as the
        archive's defaults; :func:`ser.serve.torchserve.start` turns them (plus any override)
        into ``models=`` and the KServe layout into ``model_snapshot``.
        """
        return {
            "ser": {
                "torch_threads": self.torch_threads,
                "backend": self.backend,
                "limits": dict(self.limits),
                "runtime": {
                    "workers": self.workers,
                    "batch_size": self.batch_size,
                    "max_batch_delay_ms": self.max_batch_delay_ms,
                    "response_timeout_s": self.response_timeout_s,
                },
            }
        }

    @classmethod
    def from_model_config(cls, config: dict[str, Any] | None) -> "Runtime":
        section = dict((config or {}).get("ser") or {})
        values = dict(section.get("runtime") or {})
        values["limits"] = dict(section.get("limits") or {})
        for key in ("torch_threads", "backend"):
            if key in section:
                values[key] = section[key]
        known = {f.name for f in fields(cls)}
        return cls(**{k: (v if k in ("limits", "backend") else int(v)) for k, v in values.items() if k in known})

    def registration(self, mar_name: str, version: str = "1.0") -> dict[str, Any]:
        """One entry of config.properties' ``models=`` JSON."""
        return {
            version: {
                "defaultVersion": True,
                "marName": mar_name,
                "minWorkers": self.workers,
                "maxWorkers": self.workers,
                "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay_ms,
                "responseTimeout": self.response_timeout_s,
            }
        }


def read_runtime(mar: str | Path) -> Runtime:
    """The runtime defaults stored in a .mar by :func:`build_mar` (Runtime() if none)."""
    import zipfile

    import yaml

    try:
        with zipfile.ZipFile(mar) as zf:
            names = set(zf.namelist())
            text = zf.read("model-config.yaml").decode() if "model-config.yaml" in names else ""
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{mar}: not a readable .mar ({exc})") from None
    return Runtime.from_model_config(yaml.safe_load(text) if text else None)


def model_name_for(path: str | Path) -> str:
    """A valid TorchServe model name from a file name (``out/ser-en.mar`` -> ``ser-en``)."""
    stem = Path(path).name
    for suffix in (".mar", ".pt"):
        stem = stem.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", stem).strip("-.") or "ser"
    return name if _NAME.match(name) else f"ser-{name}"


def resolve_model(path: str | Path) -> Path:
    """A training output folder (holding model.pt) or a model.pt file -> the model.pt path."""
    path = Path(path)
    if path.is_dir():
        candidate = path / SERIALIZED
        if not candidate.is_file():
            raise PackageError(f"{path}: no {SERIALIZED} in this folder (expected a `ser train --out` folder)")
        return candidate
    if not path.is_file():
        raise PackageError(f"{path}: no such model file or folder")
    return path


def check_model(path: Path) -> dict[str, Any]:
    """Load model.pt the way the handler will; fail here rather than in a server log."""
    from ser.data.features import FeatureSpec
    from ser.study.models import load_bundle

    try:
        bundle = load_bundle(path)
    except Exception as exc:  # torch.load and friends raise many kinds on a foreign file
        raise PackageError(f"{path}: not a ser model bundle ({type(exc).__name__}: {exc})") from None
    try:
        spec = FeatureSpec.from_dict(bundle.feature_spec)
    except (TypeError, ValueError) as exc:
        raise PackageError(f"{path}: its feature spec is unusable ({exc})") from None
    if spec.size != bundle.arch.in_size:
        raise PackageError(f"{path}: feature size {spec.size} != model input {bundle.arch.in_size}")
    if len(bundle.labels) != bundle.arch.n_classes:
        raise PackageError(f"{path}: {len(bundle.labels)} labels for {bundle.arch.n_classes} outputs")
    return {"arch": bundle.arch.to_dict(), "labels": list(bundle.labels), "feature_spec": spec.to_dict()}


def build_mar(
    model: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    version: str = "1.0",
    runtime: Runtime | None = None,
    handler: str | Path | None = None,
    speeds: tuple[float, ...] | None = None,
) -> Path:
    """Write ``out`` (a .mar) from a training output folder or model.pt. Returns its path.

    ``speeds``: archive the model with these test-time speed factors instead of the ones
    it was trained with (plus networks only; ``(1.0,)``: none, the fastest)."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive
    import yaml

    model_pt = resolve_model(model)
    checked = check_model(model_pt)
    out = Path(out)
    if out.suffix != ".mar":
        raise PackageError(f"{out}: the archive name must end in .mar")
    name = name or model_name_for(out)
    if not _NAME.match(name):
        raise PackageError(f"model name {name!r}: use letters, digits, '-', '_' and '.'")
    handler = Path(handler) if handler else HANDLER
    if not handler.is_file():
        raise PackageError(f"handler {handler} not found (pass --handler PATH to a handler file)")
    runtime = runtime or Runtime()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ser-mar-") as tmp:
        tmp_dir = Path(tmp)
        staged = tmp_dir / "in"
        staged.mkdir()
        if speeds is None:
            shutil.copyfile(model_pt, staged / SERIALIZED)
        else:
            from ser.study.models import save_with_speeds

            try:
                save_with_speeds(model_pt, staged / SERIALIZED, speeds)
            except ValueError as exc:
                raise PackageError(f"--speeds: {exc}") from None
            model_pt = staged / SERIALIZED
        shutil.copyfile(handler, staged / "handler.py")
        (staged / "model-config.yaml").write_text(yaml.safe_dump(runtime.model_config(), sort_keys=False))
        extra = _stage_encoder(checked["feature_spec"], tmp_dir / "extra")
        extra = _stage_export(model_pt, runtime.backend, tmp_dir / "extra") or extra
        config = ModelArchiverConfig(
            extra_files=str(extra) if extra else None,
            model_name=name,
            handler=str(staged / "handler.py"),
            version=str(version),
            serialized_file=str(staged / SERIALIZED),
            export_path=str(tmp_dir),
            archive_format="default",
            force=True,
            config_file=str(staged / "model-config.yaml"),
        )
        # The archiver stages files in $TMPDIR/<model name>: give it a private TMPDIR so
        # two builds of the same name (tests, CI, people) cannot trample each other.
        with _ARCHIVER_LOCK:
            saved = tempfile.tempdir
            tempfile.tempdir = str(tmp_dir)
            try:
                generate_model_archive(config)
            finally:
                tempfile.tempdir = saved
        built = tmp_dir / f"{name}.mar"
        part = out.with_name(out.name + ".part")
        shutil.move(str(built), part)
        part.replace(out)
    return out


def _stage_encoder(feature_spec: dict[str, Any], folder: Path) -> Path | None:
    """For a model on encoder embeddings: ``folder/encoder/`` holding the very encoder
    files it was trained with (the archiver copies ``folder``'s contents next to
    model.pt, where :func:`ser.data.encoder.register_beside` finds them). None otherwise."""
    if feature_spec.get("kind") != "whisper":
        return None
    from ser.data import encoder

    try:
        source = encoder.locate(feature_spec["encoder"], feature_spec.get("encoder_id", ""))
    except encoder.EncoderError as exc:
        raise PackageError(f"the model needs its encoder in the archive: {exc}") from None
    shutil.copytree(source, folder / "encoder", ignore=shutil.ignore_patterns(".*"))  # every file the encoder came with
    return folder


def _stage_export(model_pt: Path, backend: str, folder: Path) -> Path | None:
    """For an ONNX backend: the network exported (and for onnx-int8 calibrated) now, once,
    as ``folder/model.*.onnx``, stamped with model.pt's hash, so a worker loads it in
    under a second instead of exporting at start. None for other backends and for
    networks the ONNX backends do not take (they fall back at load time)."""
    from ser.serve import inference
    from ser.study.models import load_bundle

    if backend not in inference.EXPORT_FILES:
        return None
    bundle = load_bundle(model_pt)
    if not inference.exportable(bundle.model):
        return None
    try:
        data = inference.export(bundle.model, backend, feature_spec=bundle.feature_spec, stamp=inference.file_sha256(model_pt))
    except Exception as exc:  # noqa: BLE001 - the exporter and quantiser raise many kinds
        raise PackageError(f"{model_pt}: the {backend} export failed ({type(exc).__name__}: {exc}); --backend int8 or eager need none") from None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / inference.EXPORT_FILES[backend]).write_bytes(data)
    return folder


def config_properties(
    *,
    host: str = "127.0.0.1",
    inference_port: int = 8080,
    management_port: int = 8081,
    metrics_port: int = 8082,
    model_store: str | Path = "model-store",
    models: dict[str, Any] | None = None,
    load_models: str | None = None,
    python: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """TorchServe's config.properties text (see serving/config.properties for the annotated form)."""
    lines = {
        "inference_address": f"http://{host}:{inference_port}",
        "management_address": f"http://{host}:{management_port}",
        "metrics_address": f"http://{host}:{metrics_port}",
        "model_store": str(model_store),
        "metrics_mode": "prometheus",
        "model_metrics_auto_detect": "true",
        "disable_system_metrics": "true",
        "async_logging": "true",
        "default_response_timeout": "120",
        "max_request_size": str(64 * 1024 * 1024),
        "max_response_size": str(16 * 1024 * 1024),
        "job_queue_size": "1000",
    }
    if python:
        lines["python"] = python
    if load_models:
        lines["load_models"] = load_models
    if models:
        lines["models"] = json.dumps(models, separators=(",", ":"))
    for key, value in (extra or {}).items():
        lines[key] = str(value)
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def kserve_layout(mar: str | Path, dest: str | Path, *, version: str = "1.0", runtime: Runtime | None = None) -> Path:
    """Write KServe's TorchServe storage layout under ``dest``; returns ``dest``.

    ``dest/config/config.properties`` and ``dest/model-store/<name>.mar``. Inference
    listens on 8085 (KServe's own server takes 8080); the KServe envelope is on, so
    the v1 protocol works: ``{"instances": [{"data": "<base64 wav>"}]}``. TorchServe's
    token auth is off there (KServe's proxy cannot send the token; protect the
    endpoint at the ingress).
    """
    mar = Path(mar)
    dest = Path(dest)
    runtime = runtime or Runtime()
    name = model_name_for(mar)
    (dest / "config").mkdir(parents=True, exist_ok=True)
    (dest / "model-store").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mar, dest / "model-store" / mar.name)
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {name: runtime.registration(mar.name, version)}}
    text = config_properties(
        host="0.0.0.0",
        inference_port=8085,
        management_port=8085,
        metrics_port=8082,
        model_store="/mnt/models/model-store",
        extra={
            "grpc_inference_port": 7070,
            "grpc_management_port": 7071,
            "enable_envvars_config": "true",
            "enable_metrics_api": "true",
            "service_envelope": "kserve",
            # KServe's own server (8080) proxies to TorchServe inside the pod and sends
            # no TorchServe token; auth belongs to the cluster's ingress / mesh there.
            "disable_token_authorization": "true",
            "install_py_dep_per_model": "false",
            "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
        },
    )
    (dest / "config" / "config.properties").write_text(text)
    return dest
