"""Quality check: does a model give the same answer to the same recording at any sample rate?

Each recording of a table is resampled (librosa, soxr) to 16, 22.05, 44.1 and 48 kHz,
written as 16-bit WAV bytes, as a phone, a browser or a studio would send it, and
posted to the serving path in-process (ser.serve.serving.Predictor: the same decode, checks,
features and model as `ser serve` and `ser predict`). The table gives, per rate, the
accuracy and the agreement of the predicted emotion with the recording's answer at
the reference rate, and the fraction of recordings whose answer is the same at every
rate. Prints a table and writes JSON:

    .venv/bin/python benchmarks/rate_agreement.py --model cv/ensemble.pt --table emodb.csv [--limit 120] [--out FILE]

A model made from native-rate features (--rate native, the study's setting) can be
measured the same way, to see what the 16 kHz default prevents.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

RATES = (16000, 22050, 44100, 48000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model bundle (model.pt or ensemble.pt)")
    ap.add_argument("--table", required=True, type=Path, help="utterance table (ser ingest) whose recordings are used")
    ap.add_argument("--limit", type=int, default=120, help="recordings to use, spread evenly over the table (default 120)")
    ap.add_argument("--speaker", action="append", default=None,
                    help="use only this speaker's recordings (repeatable; e.g. the test speakers of a fold model, so accuracy is on unseen voices)")
    ap.add_argument("--reference", type=int, default=48000, help="the rate the others are compared with (default 48000)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    import librosa
    import torch

    from ser.data import audio, corpora
    from ser.serve import serving
    from ser.study import models

    torch.set_num_threads(args.threads)
    bundle = models.load_bundle(args.model)
    predictor = serving.Predictor(bundle, limits=serving.Limits(max_seconds=float("inf")))
    rows = [r for r in corpora.read_table(args.table) if r.emotion in predictor.labels and (not args.speaker or r.speaker in args.speaker)]
    if not rows:
        ap.error(f"no rows of {args.table} with the model's labels" + (f" and speakers {args.speaker}" if args.speaker else ""))
    pick = np.linspace(0, len(rows) - 1, min(args.limit, len(rows))).round().astype(int)
    rows = [rows[i] for i in sorted(set(pick.tolist()))]
    answers = {rate: [] for rate in RATES}
    truth = []
    t0 = time.perf_counter()
    for row in rows:
        wave, rate = audio.decode(row.path)
        truth.append(row.emotion)
        for target in RATES:
            resampled = wave if target == rate else librosa.resample(wave, orig_sr=rate, target_sr=target)
            answers[target].append(predictor.predict(audio.encode_wav(resampled, target))["label"])
    seconds = time.perf_counter() - t0
    ref = np.array(answers[args.reference])
    truth_a = np.array(truth)
    table = []
    for target in RATES:
        got = np.array(answers[target])
        table.append({"rate": target, "accuracy": float(np.mean(got == truth_a)), "agreement": float(np.mean(got == ref))})
    same_everywhere = float(np.mean([len({answers[r][i] for r in RATES}) == 1 for i in range(len(rows))]))
    who = f" (speakers {', '.join(args.speaker)})" if args.speaker else ""
    print(f"{len(rows)} recordings of {args.table.name}{who}, model {args.model} ({bundle.feature_spec.get('kind')}, "
          f"features at {bundle.feature_spec.get('sample_rate') or 'native'} Hz)")
    print(f"| rate (Hz) | accuracy | agreement with {args.reference} Hz |")
    print("|---:|---:|---:|")
    for row in table:
        print(f"| {row['rate']} | {100 * row['accuracy']:.1f}% | {100 * row['agreement']:.1f}% |")
    print(f"same answer at all {len(RATES)} rates: {100 * same_everywhere:.1f}% ({seconds:.0f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(args.model), "table": str(args.table), "n": len(rows), "speakers": args.speaker, "rates": table,
                                        "same_at_all_rates": same_everywhere, "reference": args.reference,
                                        "feature_spec": bundle.feature_spec, "machine": platform.platform(),
                                        "python": sys.version.split()[0]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
