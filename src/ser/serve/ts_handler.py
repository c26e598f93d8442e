"""TorchServe handler for `ser` models: a thin shell around :class:`ser.serve.serving.Predictor`.

Packed into the .mar by ``ser package``; it runs in the Python TorchServe starts its
workers with, which must be able to ``import ser`` (start TorchServe from the venv,
or set ``python=`` in config.properties; ``ser serve`` does both).

Requests
    POST /predictions/<model> with the audio file as the body and
    ``Content-Type: application/octet-stream`` (a multipart form upload works too;
    JSON is refused with 400 unless it carries ``{"audio_base64": "..."}``).
    Timeline mode (one emotion per sliding window): headers ``X-Ser-Mode: timeline``,
    ``X-Ser-Window-S: 2``, ``X-Ser-Hop-S: 1``, or the same names as form fields
    (``mode``, ``window_s``, ``hop_s``). TorchServe 0.12 does not pass the query
    string of a POST to the handler, so ``?mode=timeline`` has no effect.

Batches
    TorchServe may hand several requests at once (``batchSize`` > 1). Each one is
    validated on its own, good ones share a single forward pass, and a bad one gets
    its own 4xx status and JSON reason (``context.set_response_status(code, phrase,
    idx)``) without failing the rest. The whole batch fails only when the worker
    itself is broken (model not loaded: PredictionException 503).

Backend and device
    The network runs as :mod:`ser.serve.inference` says: the .mar's ``ser.backend``
    (onnx-int8 by default, its export packed beside model.pt; ``SER_BACKEND`` overrides,
    ``ser serve --backend`` sets it), on ``cuda:<gpu_id>`` when TorchServe gives the
    worker a GPU.

Metric
    ``RejectedRequests`` (counter, dimension ``Reason``): requests refused with a
    4xx, on the prometheus endpoint as ``RejectedRequests{Reason="not_audio",...}``.
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

from ser.serve import inference, serving
from ser.study.models import load_bundle

logger = logging.getLogger(__name__)

JSON = "application/json"
REJECTED_METRIC = "RejectedRequests"


def _limit_threads(n: int) -> None:
    """One worker = one core: torch intra-op threads and BLAS pools both set to ``n``."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set once in this process
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - sklearn brings threadpoolctl
        pass


def _quiet_worker_logs(level: str) -> None:
    """TorchServe's worker logs a line per request at INFO ("Backend received inference
    at ..."); each goes through a pipe to the frontend and into a file: CPU the model
    does not get on a 2-core machine. Raise the root level, keep metrics flowing (they
    travel as INFO lines of ts.metrics) and this handler's own messages."""
    logging.getLogger().setLevel(getattr(logging, str(level).upper(), logging.WARNING))
    logging.getLogger("ts.metrics").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)


def _is_request_row(row) -> bool:
    """A TorchServe request row: {"body": ...} or form fields, whose values are all bytes."""
    if not isinstance(row, dict):
        return False
    return "body" in row or (bool(row) and all(isinstance(v, (bytes, bytearray)) for v in row.values()))


def _headers(context, idx: int) -> dict[str, str]:
    """Request headers, lower-cased names (TorchServe passes them through to the handler)."""
    try:
        raw = context.get_all_request_header(idx) or {}
    except Exception:  # no request processor (KServe envelope instances)
        return {}
    return {str(k).lower(): v for k, v in raw.items() if isinstance(v, str)}


def _param(row: dict, headers: dict[str, str], *names: str) -> str | None:
    """A request option from a form field (``mode``) or a header (``X-Ser-Mode``).

    TorchServe 0.12 drops the query string of POST /predictions, so options travel as
    multipart form fields or as ``X-Ser-*`` headers.
    """
    for name in names:
        value = row.get(name) if isinstance(row, dict) else None
        if value is None:
            value = headers.get("x-ser-" + name.replace("_", "-"))
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        return str(value).strip()
    return None


class SerHandler(BaseHandler):
    """Loads model.pt with :func:`ser.study.models.load_bundle`; never touches BaseHandler's loaders."""

    def __init__(self) -> None:
        super().__init__()
        self.predictor: serving.Predictor | None = None

    def initialize(self, context) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        manifest = context.manifest or {}
        model_info = manifest.get("model", {})
        config = (getattr(context, "model_yaml_config", None) or {}).get("ser", {}) or {}
        threads = int(os.environ.get("SER_TORCH_THREADS", config.get("torch_threads", 1)))
        _limit_threads(threads)
        path = os.path.join(model_dir, model_info.get("serializedFile", "model.pt"))
        bundle = load_bundle(path)
        # TorchServe gives a worker a GPU through gpu_id (number_of_gpu > 0 in
        # config.properties); without CUDA or without gpu_id the model stays on the CPU.
        device = inference.pick_device(props.get("gpu_id"))
        self.predictor = serving.Predictor(
            bundle,
            name=model_info.get("modelName"),
            version=model_info.get("modelVersion"),
            limits=serving.Limits.from_dict(config.get("limits")),
            backend=os.environ.get("SER_BACKEND", config.get("backend", "eager")),
            device=device,
            source=path,  # ser package put the backend's ONNX export (if any) beside it
        )
        self.context = context
        self.manifest = manifest
        # The first call imports librosa's lazy submodules (scipy.signal, numba caches):
        # seconds. Pay that at load time, not on the first user's request.
        start = time.perf_counter()
        self.predictor.predict_many([serving.test_clip(3.0, self.predictor.spec.sample_rate or 16000)] * 2)
        logger.info("ser model %s v%s ready (%s, %d threads, warm-up %.1f s)", self.predictor.name, self.predictor.version, self.predictor.engine.description, threads, time.perf_counter() - start)
        _quiet_worker_logs(os.environ.get("SER_WORKER_LOG_LEVEL", "WARNING"))
        self.initialized = True

    # TorchServe calls handle(data, context) with one row per request in the batch.
    def handle(self, data, context):
        if self.predictor is None:
            raise PredictionException(json.dumps({"error": "not_ready", "status": 503, "message": "model not loaded"}), 503)
        self.context = context
        rows = list(data or [])
        # Behind TorchServe's KServe envelope the rows are the JSON instances of one
        # request, not requests: then results and errors stay inline as dicts (the
        # envelope wraps them in {"predictions": [...]}) and the status is 200.
        per_request = all(_is_request_row(r) for r in rows) and len(rows) == len(getattr(context, "request_ids", None) or rows)
        outputs: list = [None] * len(rows)
        plain: list[int] = []
        for i, row in enumerate(rows):
            headers = _headers(context, i) if per_request else {}
            mode = (_param(row, headers, "mode") or "").lower()
            if mode == "timeline" or (_param(row, headers, "timeline") or "").lower() in ("1", "true", "yes"):
                outputs[i] = self._timeline(row, headers)
            else:
                plain.append(i)
        if plain:
            results = self._guarded_batch([serving.pick_body(rows[i]) for i in plain])
            for i, result in zip(plain, results):
                outputs[i] = result
        for i, out in enumerate(outputs):
            outputs[i] = self._respond(context, i, out, per_request, len(rows))
        return outputs

    def _guarded_batch(self, bodies: list) -> list:
        try:
            return self.predictor.predict_many(bodies)
        except Exception:  # a bug on one body: retry one by one so only that one fails
            logger.exception("batch of %d failed; retrying one by one", len(bodies))
            return [self._one(lambda b=b: self.predictor.predict(b)) for b in bodies]

    def _timeline(self, row: dict, headers: dict[str, str]):
        window = _param(row, headers, "window_s", "window") or "2"
        hop = _param(row, headers, "hop_s", "hop") or "1"
        return self._one(lambda: self.predictor.timeline(serving.pick_body(row), window, hop))

    @staticmethod
    def _one(call):
        try:
            return call()
        except serving.RequestError as exc:
            return exc
        except Exception as exc:  # a bug, not the client's fault: 500 for this request only
            logger.exception("unexpected error while serving one request")
            return serving.RequestError(f"internal error: {type(exc).__name__}", status=500, reason="internal_error")

    def _respond(self, context, idx: int, out, per_request: bool, batch: int):
        if isinstance(out, serving.RequestError):
            if out.status < 500:
                try:
                    context.metrics.add_counter(REJECTED_METRIC, 1, None, [Dimension("Reason", out.reason)])
                except Exception:  # metrics must never fail a response
                    logger.debug("could not record metric", exc_info=True)
            body = out.to_dict()
            if per_request:
                context.set_response_status(out.status, out.reason, idx)
        else:
            body = out
        if not per_request:
            return body  # the KServe envelope wraps the dicts in {"predictions": [...]}
        context.set_response_content_type(idx, JSON)
        context.set_response_header(idx, "X-Ser-Batch", str(batch))  # how many requests shared the call
        return json.dumps(body)

