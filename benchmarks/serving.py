"""Benchmark: latency and throughput of a 3 s, 16 kHz clip through real TorchServe
and through the same model in-process (ser.serving), in one run.

For each concurrency level (default 1, 4, 16) clients send the same WAV again and
again over keep-alive HTTP connections (one thread and connection per client, token
auth on, as a user would run it) and we record every request's latency. The
in-process rows call ``Predictor.predict(bytes)`` from the same number of threads:
the cost of decode + features + model without HTTP, the frontend, or IPC. The
overhead ratio is TorchServe / in-process (p50 latency at concurrency 1, req/s at
each level).

The model has RANDOM weights (speed does not depend on them): ``--arch tiny`` (the
default: conv 8/8/8, FC 32/32) or ``--arch optimal`` (the study's SquirtleNET,
conv 188/156/340, FC 3634/2816, ~55 M parameters). Targets: p50 < 20 ms at
concurrency 1, >= 150 req/s at concurrency 16 on 2 cores.

Usage:
    .venv/bin/python benchmarks/serving.py [--arch tiny|optimal] [--requests 300]
        [--workers 2] [--batch-size 4] [--max-delay-ms 1] [--out build/bench/serving.json]
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
    "optimal": {},  # ser.models.OPTIMAL_ENGLISH
}


def make_model(arch: str, folder: Path) -> Path:
    import torch

    from ser import labels, models
    from ser.features import FeatureSpec

    torch.manual_seed(0)
    spec = models.OPTIMAL_ENGLISH.with_(**ARCHS[arch])
    net = models.build(spec)
    meta = {"name": f"bench-{arch}", "note": "random weights, for timing only"}
    return models.save_bundle(folder / "model.pt", net, labels.ENGLISH, FeatureSpec(kind="mel", size=spec.in_size).to_dict(), meta)


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


def main() -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny", help="model size (random weights)")
    parser.add_argument("--levels", default="1,4,16", help="client concurrency levels")
    parser.add_argument("--requests", type=int, default=300, help="requests per level (concurrency 16 gets twice as many)")
    parser.add_argument("--warmup", type=int, default=1000, help="requests sent before measuring")
    parser.add_argument("--workers", type=int, default=2, help="TorchServe workers (one single-threaded model each)")
    parser.add_argument("--batch-size", type=int, default=4, help="TorchServe batch size (ser's default)")
    parser.add_argument("--max-delay-ms", type=int, default=1, help="TorchServe max batch delay (ser's default)")
    parser.add_argument("--inprocess-threads", type=int, default=1, help="torch threads for the in-process rows")
    parser.add_argument("--skip-inprocess", action="store_true")
    parser.add_argument("--java-opts", default=None, help="JVM options for the TorchServe frontend (default: ser.torchserve's)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "serving.json")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    import torch

    from ser import serving
    from ser.models import load_bundle
    from ser.package import Runtime, build_mar
    from ser.torchserve import start

    clip = serving.test_clip(3.0, 16000)
    results: dict = {
        "benchmark": "serving",
        "clip": {"seconds": 3.0, "sample_rate": 16000, "bytes": len(clip), "format": "WAV PCM_16 mono"},
        "model": {"arch": args.arch, "weights": "random", "spec": ARCHS[args.arch] or "OPTIMAL_ENGLISH (SquirtleNET)"},
        "runtime": {"workers": args.workers, "batch_size": args.batch_size, "max_batch_delay_ms": args.max_delay_ms, "torch_threads_per_worker": 1},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "load_average_before": os.getloadavg(),
        "torchserve": {},
        "inprocess": {},
    }
    print(f"model: {args.arch} SquirtleNET spec, RANDOM weights; clip: 3.0 s at 16 kHz ({len(clip)} bytes); "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="ser-bench-") as tmp:
        tmp = Path(tmp)
        model_pt = make_model(args.arch, tmp)
        runtime = Runtime(workers=args.workers, batch_size=args.batch_size, max_batch_delay_ms=args.max_delay_ms)
        mar = build_mar(model_pt, tmp / f"bench-{args.arch}.mar", runtime=runtime)
        t0 = time.perf_counter()
        extra = {"java_opts": tuple(args.java_opts.split())} if args.java_opts is not None else {}
        server = start(mar, runtime=runtime, timeout=600, **extra)
        results["startup_s"] = round(time.perf_counter() - t0, 1)
        print(f"TorchServe ready in {results['startup_s']} s at {server.predict_url} "
              f"(workers {args.workers}, batch {args.batch_size}, delay {args.max_delay_ms} ms, token auth on)", flush=True)
        try:
            headers = {"Content-Type": "application/octet-stream", **server.headers()}
            factory = http_call_factory(server.predict_url, clip, headers)
            # Warm up: connections, workers, and above all the frontend's JIT (the first
            # few hundred requests cost the JVM ~2x the CPU of later ones).
            run_clients(factory, max(levels), args.warmup)
            for c in levels:
                n = args.requests * (2 if c >= 16 else 1)
                before, client0 = cpu_seconds(server.process.pid), own_cpu()
                results["torchserve"][str(c)] = row = run_clients(factory, c, n)
                after, client1 = cpu_seconds(server.process.pid), own_cpu()
                row["cpu_ms_per_request"] = {
                    "frontend": 1000 * (after["frontend"] - before["frontend"]) / n,
                    "workers": 1000 * (after["workers"] - before["workers"]) / n,
                    "client": 1000 * (client1 - client0) / n,
                }
                cpu = row["cpu_ms_per_request"]
                print(f"  torchserve  c={c:<3d} {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                      f"CPU ms/request: frontend {cpu['frontend']:.2f}, workers {cpu['workers']:.2f}, client {cpu['client']:.2f}", flush=True)
        finally:
            server.stop()

        if not args.skip_inprocess:
            # As in the handler: torch AND the BLAS/OpenMP pools at the same thread count.
            # (Left at their default of one thread per core, numpy's BLAS alone made
            # the in-process path 20x slower on a busy 2-core machine.)
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(args.inprocess_threads)
            threadpool_limits(args.inprocess_threads)
            predictor = serving.Predictor(load_bundle(model_pt))
            for _ in range(20):
                predictor.predict(clip)
            factory = inprocess_factory(predictor, clip)
            for c in levels:
                n = args.requests * (2 if c >= 16 else 1)
                results["inprocess"][str(c)] = row = run_clients(factory, c, n)
                print(f"  inprocess   c={c:<3d} {row['req_per_s']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms", flush=True)

    results["load_average_after"] = os.getloadavg()
    overhead = {}
    for c in levels:
        ts, ip = results["torchserve"].get(str(c)), results["inprocess"].get(str(c))
        if ts and ip:
            overhead[str(c)] = {"p50_ratio": ts["p50_ms"] / ip["p50_ms"], "throughput_ratio": ts["req_per_s"] / ip["req_per_s"]}
    results["overhead"] = overhead
    c1 = results["torchserve"].get("1")
    c16 = results["torchserve"].get("16")
    results["targets"] = {
        "p50_under_20ms_at_c1": bool(c1 and c1["p50_ms"] < 20.0),
        "at_least_150_rps_at_c16": bool(c16 and c16["req_per_s"] >= 150.0),
    }

    print()
    print(f"{'path':<11} {'conc':>4} {'n':>5} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for path in ("torchserve", "inprocess"):
        for c in levels:
            row = results[path].get(str(c))
            if row:
                print(f"{path:<11} {c:>4} {row['requests']:>5} {row['errors']:>4} {row['p50_ms']:>8.2f} {row['p95_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['req_per_s']:>8.1f}")
    for c, o in overhead.items():
        print(f"overhead c={c}: TorchServe/in-process p50 x{o['p50_ratio']:.2f}, req/s x{o['throughput_ratio']:.2f}")
    t = results["targets"]
    print(f"targets: p50 < 20 ms at c=1: {'MET' if t['p50_under_20ms_at_c1'] else 'MISSED'}; "
          f">= 150 req/s at c=16: {'MET' if t['at_least_150_rps_at_c16'] else 'MISSED'} "
          f"(model: {args.arch}, random weights; load average after {results['load_average_after'][0]:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
