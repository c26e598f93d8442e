"""Benchmark: mel 60x60 for every TESS file, the study's naive path against ours.

(a) naive: per-file librosa.load + preemphasis + trim + melspectrogram + dB + PIL
    resize, one process (how the study's published code works);
(b) ours: `ser.dataset.build` on all cores with a cold cache;
(c) ours again with the warm cache (a second run of `ser features`).
Prints a table and writes JSON. Usage:
    .venv/bin/python benchmarks/features.py [--tess ../shared/data/tess] [--limit N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def naive(paths: list[Path], size: int = 60) -> int:
    import librosa
    from PIL import Image

    done = 0
    for path in paths:
        try:
            y, sr = librosa.load(path, sr=None)
        except Exception:
            continue
        y = librosa.effects.trim(librosa.effects.preemphasis(y), top_db=60)[0]
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=size), ref=np.max)
        np.asarray(Image.fromarray(mel.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))
        done += 1
    return done


def main() -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tess", type=Path, default=Path(os.environ.get("SER_SHARED_DIR", REPO.parent / "shared")) / "data" / "tess")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N files")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "features.json")
    args = parser.parse_args()
    if not args.tess.is_dir():
        print(f"TESS not found at {args.tess}; pass --tess", file=sys.stderr)
        return 2

    from ser import corpora, dataset
    from ser.features import FeatureSpec

    scan = corpora.scan("tess", args.tess)
    rows = scan.rows[: args.limit] if args.limit else scan.rows
    paths = [Path(r.path) for r in rows]
    spec = FeatureSpec(kind="mel", size=60)
    naive(paths[:2])  # both paths pay librosa's one-off import/JIT cost outside the timing

    t = time.perf_counter()
    n_naive = naive(paths)
    naive_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        fs, report = dataset.build(rows, spec, cache_dir=cache, workers=args.workers, progress=False)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        fs2, report2 = dataset.build(rows, spec, cache_dir=cache, workers=args.workers, progress=False)
        warm_s = time.perf_counter() - t
    assert np.array_equal(fs.images, fs2.images) and report2.computed == 0

    results = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "files": len(rows),
        "naive": {"seconds": naive_s, "clips_per_s": n_naive / naive_s},
        "ours_cold": {"seconds": cold_s, "clips_per_s": len(fs) / cold_s, "workers": args.workers},
        "ours_warm": {"seconds": warm_s, "clips_per_s": len(fs2) / warm_s},
        "speedup_cold_vs_naive": (len(fs) / cold_s) / (n_naive / naive_s),
        "problems": len(report.problems),
    }
    print(f"mel 60x60 over {len(rows)} TESS files ({results['machine']})")
    print(f"{'path':<28}{'seconds':>10}{'clips/s':>10}{'vs naive':>10}")
    for name, key in (("(a) naive, 1 process", "naive"), (f"(b) ours, {args.workers} workers, cold", "ours_cold"), ("(c) ours, warm cache", "ours_warm")):
        r = results[key]
        print(f"{name:<28}{r['seconds']:>10.2f}{r['clips_per_s']:>10.1f}{r['clips_per_s'] / results['naive']['clips_per_s']:>9.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
