"""Benchmark: peak memory of the served model on long audio, in-process.

What a server worker holds while it answers one long request: the Predictor
(ser.serve.serving, the code TorchServe's handler and ser's KServe predictor call) with
the plus recipe's served model (``plus``: ten fold models as one ensemble, every window
also seen at 0.95x and 1.05x speed; ``plus-1x``: the same without the copies, as ``ser
package --speeds 1`` serves it; random weights, built as benchmarks/serving.py builds
them), on a 30 s clip through ``predict`` (the longest one request takes by default) and
a 10 minute recording through ``timeline`` (2 s windows, 1 s hop: what ``--timeline``
and the ``:timeline`` route do).

Each row runs in a fresh process: the model is loaded and warmed on a 3 s clip, then
the peak resident set (ru_maxrss) is read before and after the measured call; the
difference is what the long input cost on top of a warm worker. Prints a table and
writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import make_model  # noqa: E402  (the same random-weight models the serving benchmark serves)

CASES = {"predict-30s": ("predict", 30.0), "timeline-600s": ("timeline", 600.0)}

CHILD = r"""
import json, resource, sys, time
import torch
from ser.study import models
from ser.serve.serving import Predictor, test_clip
torch.set_num_threads(int(sys.argv[4]))
mode, seconds = sys.argv[2], float(sys.argv[3])
predictor = Predictor(models.load_bundle(sys.argv[1]))
call = predictor.timeline if mode == "timeline" else predictor.predict
call(test_clip(3.0))
body = test_clip(seconds)  # the voiced-like WAV the serving benchmark sends, this long
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
call(body)
took = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"warm_mb": before / 1024, "peak_mb": after / 1024, "added_mb": (after - before) / 1024, "seconds": took}))
"""


def measure(model: Path, mode: str, seconds: float, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), mode, str(seconds), str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="plus,plus-1x", help="models of benchmarks/serving.py (default plus,plus-1x)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"what to run (default {','.join(CASES)})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the worker (default 2)")
    ap.add_argument("--out", type=Path, default=Path("build/bench/memory.json"), help="JSON results")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            model, params = make_model(arch, Path(tmp) / arch)
            for case in args.cases.split(","):
                mode, seconds = CASES[case]
                row = {"model": arch, "parameters": params, "case": case, **measure(model, mode, seconds, args.threads)}
                rows.append(row)
                print(f"  {arch:10s} {case:14s} warm {row['warm_mb']:7.0f} MB  peak {row['peak_mb']:7.0f} MB  "
                      f"added {row['added_mb']:6.0f} MB  {row['seconds']:6.1f} s", flush=True)
    print(f"\n{'model':10s} {'case':14s} {'warm MB':>8s} {'peak MB':>8s} {'added MB':>9s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['model']:10s} {r['case']:14s} {r['warm_mb']:8.0f} {r['peak_mb']:8.0f} {r['added_mb']:9.0f} {r['seconds']:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
