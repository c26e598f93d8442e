"""A KServe custom predictor for ser models: KServe's v1 and v2 (Open Inference Protocol)
REST routes, liveness/readiness, bearer-token auth and a try-it page, around the same
:class:`ser.serve.serving.Predictor` TorchServe's handler wraps.

Why not the ``kserve`` SDK's ``Model`` class: ``pip install kserve`` (0.21.0) would
downgrade pandas 3.1.1 -> 2.3.3 and psutil 7.2.2 -> 5.9.8 in this stack (mlflow's
pins). The SDK's model server is FastAPI + uvicorn; this module serves the same
routes, paths and JSON shapes with the FastAPI and uvicorn already installed, so a
KServe ``InferenceService`` (manifests/base/serving) runs it as a custom container
and clients cannot tell the difference.

Routes (``{name}`` is the model name, ``ser`` unless ``--name``)::

    GET  /                              the try-it page (upload or record; bars; timeline)
    GET  /v2/health/live, /v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready
    GET  /v1/models/{name}              {"name", "ready"}
    POST /v1/models/{name}:predict      {"instances": ["<base64 audio>" | {"b64": ...}]}
    POST /v2/models/{name}/infer        OIP: one BYTES input holding base64 audio
    POST /v1/models/{name}:timeline     raw audio bytes, ?window_s=2&hop_s=1
    POST /predict                       raw audio bytes (what the page and curl send)

Bad input answers with the status and JSON of :class:`ser.serve.serving.RequestError` (the
same 4xx TorchServe gives). With a token set (``SER_TOKEN`` or ``--token``) every
route but health and the page needs ``Authorization: Bearer <token>``; in a cluster
the ingress / mesh usually authenticates instead (``--no-auth``).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime,
# and `Request` is imported inside create_app.

import argparse
import base64
import binascii
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ser.serve import serving

PAGE = Path(__file__).resolve().with_name("web") / "try.html"
MAX_BODY_BYTES = 64 * 1024 * 1024


def _error(exc: serving.RequestError):
    from fastapi.responses import JSONResponse

    return JSONResponse(exc.to_dict(), status_code=exc.status)


def _instance_bytes(instance: Any) -> Any:
    """One v1 instance or v2 datum -> what :func:`ser.serve.serving.coerce_body` takes."""
    if isinstance(instance, dict) and isinstance(instance.get("b64"), str):
        try:
            return base64.b64decode(instance["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise serving.JsonBody("field 'b64' is not valid base64 audio") from None
    return instance


class Batcher:
    """Model calls one at a time, and the requests that queued meanwhile answered together.

    Why: on a CPU, concurrent forward passes in one process only fight over the same
    cores (measured: 2x slower at 16 clients), so calls take turns (``lock``), with
    parallelism from ``--workers`` processes as in TorchServe. Requests that arrive while
    a call runs wait for the next one, which takes every queued request (up to
    ``max_bodies`` clips) through one forward pass: no waiting window, so a lone request
    pays nothing, and under load the batches form by themselves (TorchServe needs a batch
    size and delay for that). Bad input fails only its own request (``fn`` answers it
    with a RequestError); an unexpected exception in ``fn`` (a bug) fails every request of
    that batch, and the next batch runs as usual.
    """

    def __init__(self, fn, max_bodies: int = 16) -> None:
        import threading

        self.fn = fn  #: bodies -> one result per body (Predictor.predict_many)
        self.max_bodies = max(1, max_bodies)
        self.lock = threading.Lock()  #: held by whichever thread runs the model
        self._queue_lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self.calls = 0  #: model calls made (batches)

    def __call__(self, bodies: list[Any]) -> list[Any]:
        """Results for ``bodies``, from a call that may answer other requests too."""
        slot: dict[str, Any] = {"bodies": list(bodies)}
        with self._queue_lock:
            self._pending.append(slot)
        with self.lock:
            while "results" not in slot and "error" not in slot:
                self._run_next()
        if "error" in slot:
            raise slot["error"]
        return slot["results"]

    def _run_next(self) -> None:
        with self._queue_lock:  # first come, first served; at least one request per call
            batch = [self._pending.pop(0)]
            size = len(batch[0]["bodies"])
            while self._pending and size + len(self._pending[0]["bodies"]) <= self.max_bodies:
                size += len(self._pending[0]["bodies"])
                batch.append(self._pending.pop(0))
        self.calls += 1
        try:
            results = self.fn([body for slot in batch for body in slot["bodies"]])
            if len(results) != size:
                raise RuntimeError(f"the model call answered {len(results)} of {size} clips")
            at = 0
            for slot in batch:
                slot["results"], at = results[at : at + len(slot["bodies"])], at + len(slot["bodies"])
        except BaseException as exc:  # every request of the batch gets the failure, none hangs
            for slot in batch:
                if "results" not in slot:
                    slot["error"] = exc
            if not isinstance(exc, Exception):
                raise


class _Gate:
    """Bearer token and body size, checked before the app sees a request (401 / 413).

    A plain ASGI middleware: FastAPI's ``@app.middleware("http")`` wraps every request
    and response in extra tasks and streams, about 1 ms a request on these cores.
    """

    def __init__(self, app, *, token: str | None, open_paths: set[str]) -> None:
        from fastapi.responses import JSONResponse

        self.app, self.token, self.open_paths, self.refuse = app, token, open_paths, JSONResponse

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            refusal = None
            if self.token and scope["path"] not in self.open_paths:
                given = headers.get(b"authorization", b"").decode("latin-1")
                if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip(), self.token)):
                    refusal = self.refuse({"error": "unauthorized", "status": 401, "message": "send Authorization: Bearer <token>"}, status_code=401)
            length = headers.get(b"content-length", b"")
            if refusal is None and length.isdigit() and int(length) > MAX_BODY_BYTES:
                refusal = self.refuse({"error": "too_long", "status": 413, "message": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(predictor: serving.Predictor, *, token: str | None = None, max_batch: int = 16):
    """The FastAPI application serving ``predictor`` (no process, no port: tests and uvicorn).

    Model calls take turns through a :class:`Batcher`: requests that queue while one
    runs share the next forward pass (at most ``max_batch`` clips).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool as _in_thread

    batcher = Batcher(predictor.predict_many, max_batch)

    def _locked(fn, *args):
        with batcher.lock:
            return fn(*args)

    async def run_in_threadpool(fn, *args):
        return await _in_thread(_locked, fn, *args)

    name = predictor.name
    app = FastAPI(title=f"ser predictor {name}", docs_url=None, redoc_url=None)
    open_paths = {"/", "/v2/health/live", "/v2/health/ready", "/v2", "/favicon.ico"}

    app.add_middleware(_Gate, token=token, open_paths=open_paths)

    def metadata() -> dict[str, Any]:
        return {
            "name": name,
            "versions": [predictor.version],
            "platform": "pytorch",
            "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(predictor.labels)]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "labels": list(predictor.labels),
            "backend": predictor.engine.description,
        }

    def known(model: str) -> JSONResponse | None:
        if model != name:
            return JSONResponse({"error": "model_not_found", "status": 404, "message": f"no model {model!r}; this server has {name!r}"}, status_code=404)
        return None

    async def predict_all(bodies: list[Any]) -> list[dict[str, Any]]:
        results = await _in_thread(batcher, bodies)
        for result in results:
            if isinstance(result, serving.RequestError):
                raise result
        return results

    async def json_doc(request: Request) -> dict[str, Any]:
        try:
            doc = await request.json()
        except ValueError:
            raise serving.JsonBody("the body is not JSON; this route takes a KServe request document") from None
        if not isinstance(doc, dict):
            raise serving.JsonBody("the body must be a JSON object")
        return doc

    @app.exception_handler(serving.RequestError)
    async def _request_error(request: Request, exc: serving.RequestError):
        return _error(exc)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = PAGE.read_text().replace("{{MODEL}}", name).replace("{{LABELS}}", ",".join(predictor.labels))
        return HTMLResponse(html)

    @app.get("/v2/health/live")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "ser-predictor", "version": "1", "extensions": []}

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str):
        return known(model) or metadata()

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str):
        return known(model) or {"name": name, "ready": True}

    @app.get("/v1/models/{model}")
    async def v1_model(model: str):
        return known(model) or {"name": name, "ready": True}

    @app.post("/v1/models/{model}:predict")
    async def v1_predict(model: str, request: Request):
        if (missing := known(model)) is not None:
            return missing
        doc = await json_doc(request)
        instances = doc.get("instances")
        if not isinstance(instances, list) or not instances:
            raise serving.JsonBody('expected {"instances": ["<base64 audio>", ...]}')
        return {"predictions": await predict_all([_instance_bytes(i) for i in instances])}

    @app.post("/v1/models/{model}:timeline")
    async def v1_timeline(model: str, request: Request, window_s: str = "2", hop_s: str = "1"):
        if (missing := known(model)) is not None:
            return missing
        body = await request.body()
        return await run_in_threadpool(predictor.timeline, body, window_s, hop_s)

    @app.post("/v2/models/{model}/infer")
    async def v2_infer(model: str, request: Request):
        if (missing := known(model)) is not None:
            return missing
        doc = await json_doc(request)
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise serving.JsonBody('expected {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [n], "data": ["<base64>", ...]}]}')
        tensor = inputs[0]
        if tensor.get("datatype") != "BYTES" or not isinstance(tensor.get("data"), list) or not tensor["data"]:
            raise serving.JsonBody("input 'audio' must be datatype BYTES with base64 audio strings in 'data'")
        results = await predict_all([_instance_bytes(d) for d in tensor["data"]])
        probs = [p for r in results for p in r["probabilities"].values()]
        return {
            "model_name": name,
            "model_version": predictor.version,
            "id": str(doc.get("id") or secrets.token_hex(8)),
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [len(results), len(predictor.labels)], "data": probs},
                {"name": "label", "datatype": "BYTES", "shape": [len(results)], "data": [r["label"] for r in results]},
            ],
        }

    @app.post("/predict")
    async def predict_raw(request: Request, mode: str = "", window_s: str = "2", hop_s: str = "1"):
        body = await request.body()
        if mode == "timeline":
            return await run_in_threadpool(predictor.timeline, body, window_s, hop_s)
        return (await predict_all([body]))[0]

    return app


# --------------------------------------------------------------------------- process


@dataclass
class PredictorServer:
    """A predictor server process on 127.0.0.1 started by :func:`start`; :meth:`stop` ends it."""

    process: subprocess.Popen
    url: str
    model: str
    token: str | None
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.model}:predict"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.extra.get("temporary"):
            import shutil

            shutil.rmtree(self.extra.pop("temporary"), ignore_errors=True)

    def __enter__(self) -> "PredictorServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_from_archive(mar: Path) -> Path:
    """model.pt out of a .mar from ``ser package`` (unchanged inside), and the ONNX
    export it may hold beside it, into a temporary folder."""
    import tempfile
    import zipfile

    from ser.serve.inference import EXPORT_FILES
    from ser.serve.package import SERIALIZED, PackageError

    try:
        with zipfile.ZipFile(mar) as zf:
            folder = Path(tempfile.mkdtemp(prefix="ser-predictor-model-"))
            zf.extract(SERIALIZED, folder)
            for name in set(EXPORT_FILES.values()) & set(zf.namelist()):
                zf.extract(name, folder)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{mar}: not a .mar holding {SERIALIZED} ({exc})") from None
    return folder / SERIALIZED


def start(
    model: str | Path,
    *,
    port: int = 0,
    name: str = "ser",
    backend: str = "onnx-int8",
    threads: int = 1,
    workers: int = 2,
    auth: bool = True,
    token: str | None = None,
    log: str | Path | None = None,
    timeout: float = 120.0,
    max_batch: int = 16,
) -> PredictorServer:
    """Start ``python -m ser.serve.predictor_server`` for ``model`` (a model.pt or training folder)
    on 127.0.0.1 and wait until /v2/health/ready answers. Port 0 picks a free port."""
    import tempfile

    import requests

    from ser.serve.package import resolve_model
    from ser.ops.services import free_ports

    extracted = str(model).endswith(".mar")
    model_pt = model_from_archive(Path(model)) if extracted else resolve_model(model)
    port = port or free_ports(1, "127.0.0.1")[0]
    token = (token or secrets.token_urlsafe(24)) if auth else None
    if log is None:
        fd, name_ = tempfile.mkstemp(prefix="ser-predictor-", suffix=".log")
        os.close(fd)
        log = name_
    log = Path(log)
    cmd = [sys.executable, "-m", "ser.serve.predictor_server", "--model", str(model_pt), "--port", str(port), "--name", name, "--backend", backend, "--threads", str(threads), "--workers", str(workers), "--max-batch", str(max_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore::DeprecationWarning")
    env.pop("SER_TOKEN", None)
    if token:
        env["SER_TOKEN"] = token
    else:
        cmd.append("--no-auth")
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    # A model.pt read out of a .mar is a temporary copy (hundreds of MB): stop() removes it.
    server = PredictorServer(process, f"http://127.0.0.1:{port}", name, token, log, {"temporary": str(model_pt.parent) if extracted else None})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            server.stop()  # removes a temporary model copy
            raise RuntimeError(f"the predictor server exited with status {process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"the predictor server was not ready within {timeout:.0f} s:\n{server.log_tail()}")


def main(argv: list[str] | None = None) -> int:
    """The container's entry point: ``python -m ser.serve.predictor_server --model /mnt/models/model.pt``."""
    from ser.serve.inference import BACKENDS

    parser = argparse.ArgumentParser(prog="python -m ser.serve.predictor_server", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="a .mar from `ser package`, a model.pt or a `ser train --out` folder (KServe mounts storageUri at /mnt/models)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (KServe sends traffic to 8080)")
    parser.add_argument("--name", default=os.environ.get("SER_MODEL_NAME", "ser"), help="model name in the URLs (KServe: the InferenceService name)")
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get("SER_BACKEND", "onnx-int8"), help="how the network runs (ser.serve.inference)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SER_TORCH_THREADS", "1")), help="torch intra-op threads per worker")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("SER_WORKERS", "2")), help="server processes, one model copy each (one per core measured best)")
    parser.add_argument("--gpu", default=os.environ.get("SER_GPU_ID"), help="CUDA device index to run on (default: CPU; the KServe image sets 0 when a GPU is requested)")
    parser.add_argument("--max-batch", type=int, default=int(os.environ.get("SER_MAX_BATCH", "16")),
                        help="most clips one forward pass takes: requests that queue while the model runs share the next pass (1: no batching)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest clip one request may send (longer -> 413)")
    parser.add_argument("--no-auth", action="store_true", help="no bearer token (the cluster's ingress authenticates); else SER_TOKEN is required")
    args = parser.parse_args(argv)
    import uvicorn

    from ser.serve.package import resolve_model

    token = None if args.no_auth else os.environ.get("SER_TOKEN")
    if not args.no_auth and not token:
        parser.error("set SER_TOKEN (the bearer token clients send) or pass --no-auth")
    if args.workers < 1 or args.threads < 1 or args.max_batch < 1:
        parser.error("--workers, --threads and --max-batch must be at least 1")
    model = Path(args.model)
    model_pt = model_from_archive(model) if model.suffix == ".mar" else resolve_model(model)
    settings = {"model": str(model_pt), "name": args.name, "backend": args.backend, "threads": args.threads,
                "gpu": args.gpu, "max_seconds": args.max_seconds, "max_batch": args.max_batch, "token": token}
    os.environ[_SETTINGS_ENV] = json.dumps(settings)
    print(f"ser predictor {args.name}: {args.backend}, {args.workers} workers x {args.threads} threads, http://{args.host}:{args.port}", flush=True)
    if args.workers == 1:
        uvicorn.run(_app_from_env(), host=args.host, port=args.port, log_level="warning", access_log=False)
    else:  # uvicorn starts the worker processes; each builds its app from the settings
        uvicorn.run("ser.serve.predictor_server:_app_from_env", factory=True, workers=args.workers, host=args.host, port=args.port,
                    log_level="warning", access_log=False)
    return 0


_SETTINGS_ENV = "SER_PREDICTOR_SETTINGS"


def _app_from_env():
    """One worker's app: load the model as the settings say, warm it up, then serve."""
    import torch

    from ser.serve.inference import pick_device
    from ser.study.models import load_bundle

    settings = json.loads(os.environ[_SETTINGS_ENV])
    torch.set_num_threads(max(1, int(settings["threads"])))
    predictor = serving.Predictor(load_bundle(settings["model"]), name=settings["name"], limits=serving.Limits(max_seconds=settings["max_seconds"]),
                                  backend=settings["backend"], device=pick_device(settings["gpu"]), source=settings["model"])
    predictor.predict_many([serving.test_clip(3.0, predictor.spec.sample_rate or 16000)] * 2)  # warm-up before ready
    return create_app(predictor, token=settings["token"], max_batch=int(settings.get("max_batch", 16)))


if __name__ == "__main__":
    sys.exit(main())
