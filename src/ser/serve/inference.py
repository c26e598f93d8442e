"""How a loaded network runs at serving time: the eager reference or a faster variant.

Why this module exists: the study's optimal SquirtleNET holds about 55 M parameters,
~97% of them in the fully connected layers (fc1 alone is 12240 x 3634). At batch 1 a
forward pass streams those 220 MB of fp32 weights from memory once per request, so a
CPU server spends most of its time reading weights, not computing. Storing the
linear weights as int8 (PyTorch's dynamic quantisation: weights int8, activations
quantised on the fly per batch) reads a quarter of the bytes; the convolutions stay
fp32. Measured on the 2-core machine (benchmarks/serving.py, RESULTS.md).

Backends (:data:`BACKENDS`):

``eager``
    the trained module as it is, fp32: the reference every other backend is checked
    against (``ser serve --backend eager``).
``int8``
    :func:`torch.ao.quantization.quantize_dynamic` over every ``nn.Linear``; reduced
    precision, so it is checked by top-1 agreement and accuracy on real clips
    (``benchmarks/serving.py --agreement``), not by a tolerance.
``onnx``
    the network exported to ONNX and run by ONNX Runtime, fp32. On these 2 cores its
    convolutions run 2x faster than PyTorch's at batch 16 (RESULTS.md), and the
    convolutions, not the FC weights, are most of a clip's cost once batches form.
    Exact precision: held to 1e-4 of eager.
``onnx-int8``
    the same export quantised statically: int8 weights (per output channel) and uint8
    activations for convolutions and linear layers alike, with activation ranges (a
    percentile of their magnitudes) calibrated on synthetic speech run through the
    model's own features (so packaging needs no data). CPUs with VNNI (AVX512-VNNI,
    AVX-VNNI) run it fastest; on older x86 cores ONNX Runtime's uint8 x int8 kernels
    can saturate (its documentation), so check agreement there before serving it.
    Reduced precision: checked like ``int8``.

ONNX backends take networks with one fixed-size image in and logits out (the study's
CNNs and their ensembles); a network of any input length (``plus``, the encoder head)
runs ``eager`` / ``int8`` instead, and the engine says so. The export is made once at
packaging time (``ser package``: ``model.fp32.onnx`` / ``model.int8.onnx`` beside
model.pt in the .mar, stamped with model.pt's SHA-256) or, for a bare model.pt, when
the server loads it.

The device is chosen here too: ``cuda:N`` when the server hands the worker a GPU
(TorchServe's ``gpu_id``, a KServe GPU limit) and CUDA is present; int8 dynamic
quantisation is a CPU kernel, so on a GPU the backend falls back to eager fp32 and
says so in :attr:`Engine.description`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Backends a server can be asked for, the reference first.
BACKENDS: tuple[str, ...] = ("eager", "int8", "onnx", "onnx-int8")
DEFAULT_BACKEND = "onnx-int8"
#: The file an ONNX backend's export is kept in, beside model.pt.
EXPORT_FILES: dict[str, str] = {"onnx": "model.fp32.onnx", "onnx-int8": "model.int8.onnx"}
#: Synthetic utterances whose features calibrate ``onnx-int8``'s activation ranges.
CALIBRATION_CLIPS = 112


class BackendError(ValueError):
    """An unknown backend name or device."""


def check_backend(name: str) -> str:
    """``name`` if it is a known backend, else a BackendError naming the choices."""
    if name not in BACKENDS:
        raise BackendError(f"unknown inference backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def pick_device(gpu_id: Any = None) -> torch.device:
    """``cuda:<gpu_id>`` when a GPU id is given and CUDA is available, else the CPU."""
    if gpu_id is None or gpu_id == "" or not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        index = int(gpu_id)
    except (TypeError, ValueError):
        raise BackendError(f"gpu id {gpu_id!r} is not an integer") from None
    if not 0 <= index < torch.cuda.device_count():
        raise BackendError(f"gpu id {index} but only {torch.cuda.device_count()} CUDA devices are visible")
    return torch.device("cuda", index)


@dataclass
class Engine:
    """A network ready to run: ``engine(batch) -> logits`` (numpy in, numpy out)."""

    module: torch.nn.Module  #: the trained network (what the ONNX backends were exported from)
    backend: str
    device: torch.device
    session: Any = None  #: an onnxruntime.InferenceSession for the ONNX backends
    note: str = ""  #: why the backend differs from the one asked for, if it does

    @property
    def description(self) -> str:
        return f"{self.backend} on {self.device}" + (f" ({self.note})" if self.note else "")

    def __call__(self, batch: np.ndarray, lengths: torch.Tensor | None = None) -> np.ndarray:
        """Logits of a batch; ``lengths`` (valid frames per row) for networks that take
        them (the plus network and its ensembles)."""
        if self.session is not None:
            return self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type != "cpu":
            x = x.to(self.device, non_blocking=True)
        with torch.inference_mode():
            out = self.module(x, lengths) if lengths is not None else self.module(x)
            return out.float().cpu().numpy()


def exportable(model: torch.nn.Module) -> bool:
    """Whether the ONNX backends can take ``model``: one fixed-size N x N image in."""
    return not getattr(model, "takes_lengths", False) and hasattr(getattr(model, "spec", None), "in_size")


def prepare(
    model: torch.nn.Module,
    backend: str = DEFAULT_BACKEND,
    device: torch.device | str | None = None,
    *,
    feature_spec: Any = None,
    source: str | Path | None = None,
) -> Engine:
    """The trained ``model`` (eval mode) as an :class:`Engine` for ``backend`` on ``device``.

    The weights are not changed: int8 works on a copy (the module is put in eval mode
    and, for the CPU backends, on the CPU). For the ONNX backends, ``source`` (the
    model.pt the model came from) is where an export made at packaging time is looked
    for, and ``feature_spec`` (the model's features) calibrates ``onnx-int8`` when there
    is none; an engine that had to export says so in its description.
    """
    check_backend(backend)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.eval()
    if device.type != "cpu":
        if backend != "eager":
            logger.info("backend %s is CPU-only; running eager fp32 on %s", backend, device)
        return Engine(model.to(device), "eager", device, note=f"{backend} is CPU-only" if backend != "eager" else "")
    if backend in EXPORT_FILES and not exportable(model):
        fallback = "eager" if backend == "onnx" else "int8"
        logger.info("backend %s takes fixed-size images only; running %s for this network", backend, fallback)
        engine = prepare(model, fallback, device)
        engine.note = f"{backend} takes fixed-size images only"
        return engine
    if backend in EXPORT_FILES:
        data, note = archived_export(backend, source), ""
        if data is None:
            start = time.perf_counter()
            data = export(model, backend, feature_spec=feature_spec, stamp=file_sha256(source) if source is not None else "")
            note = "exported at load"
            logger.warning("no %s export of this model was packaged; exported it now in %.1f s (ser package puts it in the .mar)",
                           backend, time.perf_counter() - start)
        return Engine(model.cpu(), backend, device, session=_session(data), note=note)
    if backend == "int8":
        import copy
        import warnings

        with warnings.catch_warnings():
            # torch 2.13 points eager quantisation users at torchao; the API still works
            # and is what the installed stack offers without another dependency.
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)
        return Engine(quantized.eval(), "int8", device)
    return Engine(model.cpu(), "eager", device)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archived_export(backend: str, source: str | Path | None) -> bytes | None:
    """The export beside ``source`` (model.pt) for ``backend`` if it was made from that
    very file, else None: missing, unreadable or from another model (the last two logged)."""
    if source is None:
        return None
    candidate = Path(source).with_name(EXPORT_FILES[backend])
    if not candidate.is_file():
        return None
    import onnx

    data = candidate.read_bytes()
    try:
        stamp = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}.get("ser.model_sha256")
    except Exception as exc:  # noqa: BLE001 - a damaged file of any kind: export again instead
        logger.warning("%s is not a readable ONNX model (%s); exporting again", candidate, exc)
        return None
    if stamp != file_sha256(source):
        logger.warning("%s was not exported from %s (stamp %s); exporting again", candidate, source, stamp)
        return None
    return data


def export(model: torch.nn.Module, backend: str, *, feature_spec: Any = None, stamp: str = "") -> bytes:
    """``model`` as ONNX bytes for ``backend`` (``onnx``: fp32; ``onnx-int8``: static int8
    calibrated on :func:`calibration_images`), stamped with ``stamp`` (model.pt's SHA-256)."""
    import warnings

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if backend not in EXPORT_FILES:
        raise BackendError(f"backend {backend!r} has no export; choose one of {', '.join(EXPORT_FILES)}")
    if not exportable(model):
        raise BackendError("only networks that take one fixed-size image can be exported")
    size = model.spec.in_size
    with tempfile.TemporaryDirectory(prefix="ser-onnx-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter warns that dynamo is the future
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu().eval(), (torch.zeros(1, size, size),), str(fp32), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        path = fp32
        if backend == "onnx-int8":
            if feature_spec is None:
                raise BackendError("onnx-int8 needs the model's feature spec to calibrate on")
            images = calibration_images(feature_spec)

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.batches = iter(images[i : i + 16] for i in range(0, len(images), 16))

                def get_next(self) -> dict[str, np.ndarray] | None:
                    batch = next(self.batches, None)
                    return None if batch is None else {"image": batch}

            pre, path = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            quant_pre_process(str(fp32), str(pre))
            # Ranges: the 99.999th percentile of each activation's magnitude (ONNX Runtime's
            # percentile calibrator, symmetric by default), not min-max: on the study's
            # network and real TESS clips, 99.6% top-1 agreement against 98.9% (RESULTS.md).
            # The calibrator prints its progress; keep it out of server logs.
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.Percentile,
                                op_types_to_quantize=["Conv", "Gemm", "MatMul"])  # batch norm after a ReLU stays fp32
        proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"ser.backend": backend, "ser.model_sha256": stamp})
    return proto.SerializeToString()


def calibration_images(feature_spec: Any, count: int = CALIBRATION_CLIPS) -> np.ndarray:
    """Feature images of ``count`` synthetic utterances (every emotion, eight voices),
    computed as the model computes its features: activation ranges for ``onnx-int8``."""
    from ser.data import features
    from ser.data.corpora import synthetic

    spec = feature_spec if isinstance(feature_spec, features.FeatureSpec) else features.FeatureSpec.from_dict(feature_spec)
    rate = spec.sample_rate or 16000
    return np.stack([features.extract(wave, rate, spec) for wave in synthetic.utterances(count, sample_rate=rate)]).astype(np.float32)


def _session(data: bytes) -> Any:
    """An ONNX Runtime session on as many threads as torch was given (one per worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # idle pool threads sleep instead of spinning: a server runs one worker per core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def agreement(model: torch.nn.Module, images: np.ndarray, y: np.ndarray, backend: str, *, feature_spec: Any = None, batch: int = 64) -> dict[str, float]:
    """How far ``backend`` strays from the eager reference on labelled feature images.

    Why: a reduced-precision backend is accepted only if it answers like the trained
    model on real clips (the target: >= 99% top-1 agreement and unweighted accuracy
    within 0.5 points). Returns top-1 agreement, both unweighted accuracies (mean
    per-class recall) and the largest probability difference.
    """
    from sklearn.metrics import balanced_accuracy_score

    from ser.serve.serving import softmax

    ref, other = prepare(model, "eager"), prepare(model, backend, feature_spec=feature_spec)
    p_ref = np.concatenate([softmax(ref(images[i : i + batch])) for i in range(0, len(images), batch)])
    p_other = np.concatenate([softmax(other(images[i : i + batch])) for i in range(0, len(images), batch)])
    top_ref, top_other = p_ref.argmax(1), p_other.argmax(1)
    return {
        "clips": int(len(images)),
        "top1_agreement": float((top_ref == top_other).mean()),
        "ua_eager": float(balanced_accuracy_score(y, top_ref)),
        f"ua_{backend}": float(balanced_accuracy_score(y, top_other)),
        "max_abs_prob_diff": float(np.abs(p_ref - p_other).max()),
    }
