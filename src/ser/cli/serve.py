"""``ser package`` and ``ser serve``: a trained model -> .mar -> a local TorchServe endpoint."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ser.cli import UserError


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, but not the empty ones (None, False) nor twice."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def register(sub: argparse._SubParsersAction) -> None:
    _register_package(sub)
    _register_serve(sub)


def _runtime_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    if defaults:
        g = p.add_argument_group("TorchServe runtime (stored in the .mar's model-config.yaml)")
        d = {"workers": 2, "batch": 4, "delay": 1}
        tail = " (default: %(default)s)"
    else:
        g = p.add_argument_group("TorchServe runtime overrides (config.properties `models=`; default: what the .mar says)")
        d = {"workers": None, "batch": None, "delay": None}
        tail = ""
    g.add_argument("--workers", type=int, default=d["workers"], metavar="N", help="worker processes, one single-threaded model copy each; one per core measured best" + tail)
    g.add_argument("--batch-size", type=int, default=d["batch"], metavar="N", help="most requests TorchServe hands one worker call; each is validated alone and good ones share one forward pass" + tail)
    g.add_argument("--max-delay-ms", type=int, default=d["delay"], metavar="MS", help="how long TorchServe waits to fill a batch" + tail)
    from ser.serve.inference import BACKENDS

    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="onnx-int8" if defaults else None,
        help=("how the network runs: eager = the PyTorch fp32 reference; int8 = PyTorch with int8 linear layers; "
              "onnx = ONNX Runtime fp32 (within 1e-4 of eager); onnx-int8 = ONNX Runtime, convolutions and linear layers int8, "
              "calibrated on synthetic speech (>=99%% top-1 agreement on real clips; fastest measured on CPU for the study's CNNs). "
              "ser package exports the ONNX backends into the .mar; networks of any input length fall back to eager / int8") + tail,
    )


def _register_package(sub) -> None:
    p = sub.add_parser(
        "package",
        help="build a TorchServe .mar (and optionally a KServe storage folder) from a trained model",
        description=(
            "Build a TorchServe model archive from a `ser train --out` folder (or its model.pt). "
            "The .mar holds model.pt unchanged (weights, ArchSpec, labels and the FeatureSpec, so "
            "serving computes exactly the training features; --speeds alone may change its speed copies), serving/handler.py, and "
            "model-config.yaml (workers, batching, request limits, inference backend). The serving environment needs "
            "`ser` installed: the handler imports ser.serve.serving."
        ),
        formatter_class=_Help,
    )
    p.add_argument("--model", required=True, metavar="DIR|model.pt", help="training output folder holding model.pt, or a model.pt file")
    p.add_argument("--out", required=True, metavar="X.mar", help="archive to write; its name (without .mar) is the model name in URLs unless --name is given")
    p.add_argument("--kserve", metavar="DIR", help="also write KServe's storage layout here: DIR/config/config.properties and DIR/model-store/X.mar (inference on 8085, KServe v1 envelope)")
    p.add_argument("--name", help="model name (default: from --out)")
    p.add_argument("--version", default="1.0", help="model version reported in every response")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest clip one request may send (longer -> 413 too_long)")
    p.add_argument("--handler", metavar="PATH", help="handler file (default: ser/serve/ts_handler.py of the installed package; serving/handler.py is the same)")
    _speeds_option(p)
    _runtime_options(p, defaults=True)
    p.set_defaults(func=run_package)


def _register_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a .mar or a trained model with TorchServe or the KServe predictor on 127.0.0.1 until Ctrl-C or `ser services down`",
        description=(
            "Start TorchServe on 127.0.0.1 with a private model store, log folder and key file, "
            "wait until the workers are ready, print the URL and a curl example, and run until "
            "Ctrl-C or SIGTERM (which stop TorchServe and all its workers). The server is recorded "
            "where `ser services status` lists it and `ser services down` stops it. Token authorization is on: "
            "the printed curl carries the inference token. Send audio as the request body with "
            "Content-Type application/octet-stream (wav, flac, ogg, aiff); add the header "
            "`X-Ser-Mode: timeline` (and X-Ser-Window-S / X-Ser-Hop-S) for one emotion per window. "
            "With --server kserve, ser's KServe predictor runs instead (KServe v1 and v2 REST routes, "
            "bearer token, a try-it page at /; the management, metrics, token-minutes, run-dir and "
            "worker/batch options are TorchServe's and do not apply; --workers and --backend do)."
        ),
        formatter_class=_Help,
    )
    p.add_argument("--model", required=True, metavar="X.mar|DIR", help="a .mar from `ser package`, or a training folder / model.pt (packed on the fly)")
    p.add_argument(
        "--server",
        choices=("torchserve", "kserve"),
        default="torchserve",
        help="torchserve: TorchServe with the .mar; kserve: ser's KServe predictor (v1 + v2 REST, try-it page at /), the same request rules",
    )
    p.add_argument("--threads", type=int, default=1, help="kserve: torch threads per predictor worker (--workers sets the worker processes, default 2)")
    p.add_argument("--port", type=int, default=8080, help="inference port on 127.0.0.1 (0: any free port)")
    p.add_argument("--management-port", type=int, default=0, help="management API port (0: any free port)")
    p.add_argument("--metrics-port", type=int, default=0, help="prometheus metrics port (0: any free port)")
    p.add_argument("--no-auth", action="store_true", help="turn TorchServe's token authorization off (only on a machine you alone use)")
    p.add_argument("--token-minutes", type=int, default=60, help="lifetime of the printed token (TorchServe's token_expiration_min)")
    p.add_argument("--run-dir", metavar="DIR", help="keep config, logs and key_file.json here (default: a temporary folder, removed on exit)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the workers to be ready")
    _speeds_option(p)
    _runtime_options(p, defaults=False)
    p.set_defaults(func=run_serve)


def _speeds_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speeds", type=_factors, metavar="F[,F...]",
                   help="plus models: serve with these test-time speed factors instead of the trained model's (a copy of "
                        "model.pt is rewritten, weights unchanged; ser serve: a training folder or model.pt, not a .mar). "
                        "1 = no copies: about a third of the plus recipe's serving time through TorchServe, 2.3 UA points "
                        "lower on EmoDB's unseen speakers (docs/QUALITY.md)")


def _factors(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give speed factors separated by commas, e.g. 1 or 0.95,1,1.05") from None


def _runtime(args, base=None):
    """The Runtime for a package build (``base`` None) or a server (``base``: the .mar's)."""
    from dataclasses import replace

    from ser.serve.package import PackageError, Runtime

    given = {"workers": args.workers, "batch_size": args.batch_size, "max_batch_delay_ms": args.max_delay_ms, "backend": args.backend}
    given = {k: v for k, v in given.items() if v is not None}
    try:
        if base is None:
            limits = {"max_seconds": args.max_seconds}
            return Runtime(limits=limits, **given)
        return replace(base, **given)
    except PackageError as exc:
        raise UserError(str(exc)) from None


def run_package(args) -> int:
    from ser.serve.package import PackageError, build_mar, kserve_layout

    if args.max_seconds <= 0:
        raise UserError("--max-seconds must be positive")
    runtime = _runtime(args)
    try:
        start = time.perf_counter()
        mar = build_mar(args.model, args.out, name=args.name, version=args.version, runtime=runtime, handler=args.handler, speeds=args.speeds)
        print(f"wrote {mar} ({mar.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")
        if args.kserve:
            dest = kserve_layout(mar, args.kserve, version=args.version, runtime=runtime)
            print(f"wrote KServe layout {dest}/config/config.properties and {dest}/model-store/{mar.name}")
    except PackageError as exc:
        raise UserError(str(exc)) from None
    print(f"serve it: ser serve --model {mar}")
    return 0


def run_serve(args) -> int:
    """``ser serve``; with --speeds, a copy of the model with those factors is served (removed on exit)."""
    model = Path(args.model)
    if not model.exists():
        raise UserError(f"{model}: no such .mar, folder or model file")
    if args.speeds is None:
        return _run_serve(args, model)
    if model.suffix == ".mar":
        raise UserError(f"--speeds: {model} is already packaged; build it again with `ser package --speeds ...`, or serve the training folder")
    import tempfile

    from ser.serve.package import PackageError, resolve_model
    from ser.study.models import save_with_speeds

    with tempfile.TemporaryDirectory(prefix="ser-speeds-") as tmp:
        try:
            model = save_with_speeds(resolve_model(model), Path(tmp) / "model.pt", args.speeds)
        except (PackageError, ValueError) as exc:
            raise UserError(f"--speeds: {exc}") from None
        return _run_serve(args, model)


def _run_serve(args, model: Path) -> int:
    """Serve ``model`` (a .mar, a training folder or a model.pt) until stopped."""
    from ser.serve.package import PackageError, Runtime, read_runtime
    from ser.serve.torchserve import ServeError, start

    try:
        base = read_runtime(model) if model.suffix == ".mar" else Runtime()
    except PackageError as exc:
        raise UserError(str(exc)) from None
    runtime = _runtime(args, base)
    if args.server == "kserve":
        return _serve_kserve(args, model, runtime)
    print(f"starting TorchServe for {model} on 127.0.0.1 (workers load the model and warm up; this takes a while) ...", flush=True)
    try:
        server = start(
            model,
            port=args.port,
            management_port=args.management_port,
            metrics_port=args.metrics_port,
            auth=not args.no_auth,
            runtime=runtime,
            run_dir=args.run_dir,
            timeout=args.timeout,
            token_expiration_min=args.token_minutes,
        )
    except (ServeError, PackageError) as exc:
        raise UserError(str(exc)) from None

    def banner() -> None:
        info = server.describe()[0]
        print(f"serving model {server.model!r} at {server.predict_url}")
        print(f"  workers {len(info.get('workers', []))}, batch size {info.get('batchSize')}, max batch delay {info.get('maxBatchDelay')} ms")
        print(f"  management {server.management_url}   metrics {server.metrics_url}/metrics   logs {server.log_dir}")
        if server.token:
            print(f"  token auth ON: inference token valid {args.token_minutes} min (key file {server.run_dir / 'key_file.json'})")
        else:
            print("  token auth OFF")
        print("try:")
        print(f"  {server.curl('clip.wav')}")
        timeline = '-H "X-Ser-Mode: timeline" -H "X-Ser-Window-S: 2" -H "X-Ser-Hop-S: 1"'
        print("  " + server.curl("long.wav").replace("curl -s", f"curl -s {timeline}", 1))

    record = ("torchserve", server.run_dir, server.log_dir / "ts_log.log")
    return _serve_until_stopped(server, "TorchServe", banner, record)


def _serve_until_stopped(server, what: str, banner, record: tuple[str, Path, Path]) -> int:
    """Record the server where `ser services status|down` find it, print the banner, then
    wait until Ctrl-C, SIGTERM (a supervisor's stop) or `ser services down`, and stop
    ``server`` and drop its record either way; 1 if the server died on its own, with its
    last log lines. ``record``: (service name, data folder, log file)."""
    from ser.ops import services

    service, data_dir, log = record
    pid = server.process.pid
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        services.track_process(service, pid, server.url, data_dir, log)
        banner()
        print("Ctrl-C stops the server (so does `ser services down`).", flush=True)
        while not stop["now"]:
            if not server.alive():
                if services.stopped_on_purpose(service, pid):  # `ser services down` is stopping it (or has)
                    print(f"{what} was stopped from outside (`ser services down`).", flush=True)
                    return 0
                print(f"{what} exited unexpectedly (status {server.process.returncode}); last log lines:\n{server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        print(f"stopping {what} ...", flush=True)
        server.stop()
        services.forget_server(service, pid)
        print("stopped.")
    return 0


def _serve_kserve(args, model: Path, runtime) -> int:
    """``ser serve --server kserve``: the KServe predictor process on 127.0.0.1 until Ctrl-C."""
    from ser.serve.package import PackageError, model_name_for
    from ser.serve.predictor_server import start

    print(f"starting the KServe predictor for {model} on 127.0.0.1 ({runtime.backend}) ...", flush=True)
    name = model_name_for(model) if model.suffix == ".mar" else "ser"
    try:
        server = start(model, port=args.port, name=name, backend=runtime.backend, threads=args.threads, workers=args.workers or 2, auth=not args.no_auth, timeout=args.timeout)
    except (RuntimeError, PackageError) as exc:
        raise UserError(str(exc)) from None

    def banner() -> None:
        auth = f' -H "Authorization: Bearer {server.token}"' if server.token else ""
        print(f"serving model {name!r} at {server.url} (KServe v1 and v2 protocol)")
        print(f"  try-it page: {server.url}/" + (f"  (paste the token {server.token})" if server.token else ""))
        print(f"  curl -s{auth} -H 'Content-Type: application/octet-stream' --data-binary @clip.wav {server.url}/predict")
        print(f"  v1: POST {server.predict_url}  v2: POST {server.url}/v2/models/{name}/infer   logs {server.log}")

    return _serve_until_stopped(server, "the KServe predictor", banner, ("kserve-predictor", model if model.is_dir() else model.parent, server.log))
