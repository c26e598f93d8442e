"""Data commands: synth, ingest, augment, features (corpus files -> feature images)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ser import steps
from ser.cli import UserError
from ser.settings import add_arguments, from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write the synthetic demo corpus (speech-like, NOT real speech)",
        description="Generate a deterministic synthetic corpus in a real layout (RAVDESS: 7 English "
        "classes; AESDD: 5 Greek classes) with emotion-dependent prosody. It is the embedded "
        "default of `make demo` and of the tests; results on it are labelled synthetic.",
    )
    p.add_argument("--layout", choices=("ravdess", "aesdd"), default="ravdess", help="corpus layout and label set")
    p.add_argument("--per-class", type=int, default=40, help="files per emotion (default 40)")
    p.add_argument("--speakers", type=int, default=None, help="number of actors (default 4 ravdess, 5 aesdd)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same bytes")
    p.add_argument("--rate", type=int, default=16000, help="sample rate in Hz (default 16000)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the corpus into")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "upload",
        help="upload a corpus folder to S3 (the bucket the pipelines' ingest step reads)",
        description="Copy a local folder to s3://BUCKET/PREFIX through the minio SDK. The endpoint and "
        "keys come from the environment (S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), "
        "as `ser services env` prints them locally or KFP's mlpipeline-minio-artifact secret holds them.",
    )
    p.add_argument("folder", type=Path, help="local folder, e.g. a corpus as distributed")
    p.add_argument("dest", help="destination s3://BUCKET/PREFIX, e.g. s3://ser-data/corpora/tess")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI; automatic when not on a terminal)")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        "ingest",
        help="scan corpus folders into an utterance table (CSV)",
        description="Scan one or more corpus folders as distributed and write the utterance table "
        "(path, corpus, speaker, gender, emotion, text, sha256, duration, sample_rate, container). "
        "Files that cannot be used are listed with the reason in PROBLEMS (default: beside the "
        "table, *.problems.csv); none is dropped silently and none stops the scan.",
    )
    add_arguments(p, steps.IngestRequest)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI; automatic when not on a terminal)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "augment",
        help="add perturbed copies of TESS files (pitch/stretch/noise pairs from the study's grids)",
        description="Perturb each TESS waveform with a pair of two of pitch shift, time stretch and "
        "Gaussian noise, values from the study's grids, seeded per file. Writes WAV copies and a table "
        "with the originals plus the copies; the copies carry augmented_from (the source hash) so splits "
        "keep them on the training side only. Mode 'replace' (the study): each copy replaces its source "
        "in training folds; 'add': copies join their source.",
    )
    p.add_argument("--table", type=Path, required=True, help="utterance table from `ser ingest`")
    p.add_argument("--mode", choices=("replace", "add"), default="replace", help="replace (the study) or add")
    p.add_argument("--copies", type=int, default=1, help="copies per file in 'add' mode (default 1)")
    p.add_argument("--corpora", default="tess", help="comma-separated corpora to augment (default tess)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbation draws")
    p.add_argument("--audio-dir", type=Path, required=True, help="folder for the perturbed WAV files")
    p.add_argument("--out", type=Path, required=True, help="table to write: originals + copies (CSV)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI; automatic when not on a terminal)")
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser(
        "features",
        help="extract spectral images (mel/chroma/mfcc, N x N) for every row of a table",
        description="Pre-emphasis, trim, spectral feature, dB, bilinear resize of the time axis to N "
        "(METHOD.md section 2), on every core, with an on-disk cache keyed by (file hash, spec): a "
        "second run does no work and an interrupted run resumes. Writes one .npz feature set holding "
        "images, labels, speaker, corpus, source ids and the spec.",
    )
    add_arguments(p, steps.FeaturizeRequest)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI; automatic when not on a terminal)")
    p.set_defaults(func=cmd_features)


def cmd_upload(args: argparse.Namespace) -> int:
    from ser.adapters.store import S3Store, StoreError, parse_uri

    if not args.folder.is_dir():
        raise UserError(f"folder not found: {args.folder}")
    try:
        bucket, prefix = parse_uri(args.dest)
        store = S3Store.from_env()
        store.ensure_bucket(bucket)
        keys = store.upload_dir(args.folder, bucket, prefix, progress=not args.no_progress)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    print(f"uploaded {len(keys)} files from {args.folder} to {args.dest}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ser.data.corpora import synthetic

    files = synthetic.generate(args.out, layout=args.layout, per_class=args.per_class,
                               speakers=args.speakers, seed=args.seed, sample_rate=args.rate)
    print(f"wrote {len(files)} SYNTHETIC {args.layout} files to {args.out}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    result = steps.ingest(from_args(steps.IngestRequest, args, progress=not args.no_progress))
    columns, counts = result.counts()
    width = max([len(str(r["emotion"])) for r in counts] + [7])
    for row in [dict(zip(columns, columns)), *counts]:
        print(f"{row['emotion']:<{width}} " + " ".join(f"{row[c]:>10}" for c in columns[1:-1]) + f" {row['total']:>7}")
    print(f"table: {result.table} ({len(result.rows)} rows)")
    print(f"problems: {result.problems_path} ({len(result.problems)} files not used)")
    for p in result.problems[:10]:
        print(f"  skipped {p.path}: {p.reason}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from ser.data import augment, corpora, tables

    try:
        rows = tables.read_rows(args.table)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    wanted = tuple(c.strip() for c in args.corpora.split(",") if c.strip())
    new_rows, problems = augment.augment_rows(rows, args.audio_dir, mode=args.mode, copies=args.copies,
                                              seed=args.seed, corpora=wanted, progress=not args.no_progress)
    columns = (*corpora.COLUMNS, *augment.AUGMENT_COLUMNS)
    tables.write_rows([*rows, *new_rows], args.out, columns)
    print(f"{len(new_rows)} {args.mode} copies of {', '.join(wanted)} files in {args.audio_dir}")
    if not new_rows:
        print(f"note: no rows of corpus {', '.join(wanted)} in {args.table}: nothing augmented")
    for path, reason in problems:
        print(f"  skipped {path}: {reason}")
    print(f"table: {args.out} ({len(rows)} originals + {len(new_rows)} copies)")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    result = steps.featurize(from_args(steps.FeaturizeRequest, args, progress=not args.no_progress))
    fs, report, spec = result.features, result.report, result.features.spec
    shape = f"{spec.size}-wide whisper-{spec.encoder} embeddings" if spec.kind == "whisper" else f"images {spec.size}x{spec.size} {spec.kind}"
    print(f"{len(fs)} {shape} -> {result.path} "
          f"({report.computed} computed, {report.cached} from cache, {result.seconds:.1f} s)")
    print("classes: " + ", ".join(f"{k} {v}" for k, v in fs.class_counts().items()))
    if report.problems:
        print(f"{len(report.problems)} rows not used, reasons in {result.problems_path}")
    print("spec: " + ", ".join(f"{k}={v}" for k, v in spec.to_dict().items()))
    return 0
