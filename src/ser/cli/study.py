"""Study commands: train, evaluate, transfer, predict (feature sets -> models -> results).

Train, evaluate and transfer parse their flags into the typed requests of
:mod:`ser.steps` (whose fields declare most of the flags) and call the step; this
module only adds what belongs to a command line (paths and URIs to resolve, MLflow
mode, printing the result).

Heavy imports (torch, numpy, matplotlib) happen inside the handlers so that
``ser --help`` stays instant.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from ser.cli import UserError
from ser.steps import load_features

MODEL_ENV = "SER_MODEL"
DEVICES = ("auto", "cpu", "cuda")

CONFIG_HELP = (
    "architecture and training settings, JSON or YAML: {'arch': {ArchSpec fields: cnn, conv_channels, "
    "conv_kernels, pool_kernels, pool_strides, bn_momentum, dropout, fc_features, leaky_slope}, 'train': "
    "{TrainConfig fields: epochs, batch_size, lr, seed, eval_every}} (a flat dict of the same fields also "
    "works; 'preset: optimal-english' starts from the study's optimum). in_size and n_classes default to "
    "the feature set's image size and label count"
)


# --------------------------------------------------------------------------- shared helpers


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to compute: auto (CUDA if present, else CPU), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


def _setup_torch(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(int(args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto")


def resolve_model_path(text: str | None) -> Path:
    """A model bundle path from --model / $SER_MODEL: a file, a folder holding
    model.pt, or an MLflow URI (models:/NAME/VERSION, models:/NAME@alias, runs:/ID/PATH)
    resolved by :func:`ser.adapters.models_uri.resolve`."""
    text = text or os.environ.get(MODEL_ENV)
    if not text:
        raise UserError(f"no model given: pass --model PATH (or an MLflow models:/ URI), or set {MODEL_ENV}")
    if text.startswith(("models:/", "runs:/")):
        try:
            from ser.adapters import models_uri  # written by the tracking side; optional here
        except ImportError as exc:
            raise UserError(f"cannot resolve {text}: MLflow model URIs need ser.adapters.models_uri ({exc})") from None
        try:
            return Path(models_uri.resolve(text))
        except Exception as exc:
            raise UserError(f"cannot resolve {text}: {exc}") from None
    path = Path(text)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UserError(f"model {path} does not exist")
    return path


def _load_bundle(text: str | None, device: str = "cpu"):
    from ser.study import models

    path = resolve_model_path(text)
    try:
        return path, models.load_bundle(path, device=device)
    except Exception as exc:  # torn file, foreign pickle, unknown spec: all the user's to fix
        raise UserError(f"{path}: cannot load model bundle ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise UserError(f"config {path} is not valid JSON/YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must hold a mapping (arch/train sections or ArchSpec/TrainConfig fields)")
    return data


def _fraction_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _open_tracking(args: argparse.Namespace):
    """The MLflow session of a command (ser.adapters.track_runs); strict tracking that cannot track is a UserError."""
    from ser.adapters import track_runs
    from ser.adapters.tracking import TrackingError

    try:
        return track_runs.open_session(args.tracking, args.experiment)
    except TrackingError as exc:
        raise UserError(str(exc)) from None


def _tracking_errors(func):
    """A strict-tracking failure during a command ends it as a UserError (exit 2), not a traceback."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from ser.adapters.tracking import TrackingError

        try:
            return func(args)
        except TrackingError as exc:
            raise UserError(str(exc)) from None

    return wrapper


# --------------------------------------------------------------------------- register


def register(sub: argparse._SubParsersAction) -> None:
    from ser import steps
    from ser.settings import add_arguments
    from ser.adapters.track_runs import add_arguments as add_tracking

    p = sub.add_parser(
        "train",
        help="train a model on the training split and evaluate it on the held-out test split",
        description="Final training (METHOD.md section 7): split the feature set into train/test (80/20, "
        "random stratified or speaker-independent), train without early stopping, evaluate every K epochs "
        "and keep the checkpoint with the lowest validation loss (validation rows carved from the training "
        "side; --checkpoint test keeps the study's rule, lowest TEST loss, labelled optimistic), then score "
        "the test rows. For speaker-independent cross-validation over every speaker use `ser cv`. Writes OUT/model.pt, metrics.json (accuracy, macro_f1, per_class, "
        "confusion_matrix, best_epoch, seed, split), learning_curve.png, confusion_matrix.png, "
        "improvements.md/.csv (the study's Table 5), history.csv and config.json. A killed run "
        "resumes from OUT/checkpoint.pt when rerun with the same arguments. With --seeds K, one "
        "subfolder per seed plus seeds.md/.csv/.json (mean and standard deviation). MLflow (--tracking): one "
        "'final' run per seed (nested under a parent with --seeds K) with per-epoch metrics, these files, the "
        "feature spec and the model, registered as ser-english (ser-greek for Greek labels) with alias "
        "challenger; it becomes champion only if it beats the champion's macro F1 on this run's test set.",
    )
    add_arguments(p, steps.TrainRequest)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    group.add_argument("--preset", default=None, help="named architecture instead of --config: optimal-english (the default "
                       "when neither is given: SquirtleNET, COC 188 156 340, FCOC 3634 2816, batch 32, LR 6e-5)")
    p.add_argument("--held-out", type=Path, default=None, metavar="SEARCH_JSON",
                   help="a search's search.json: test on exactly the rows that search held out (the study's final model; "
                   "--split and --test-size are then not used)")
    _add_device(p)
    add_tracking(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score a model bundle on a feature set: metrics.json + confusion matrix",
        description="Evaluate OUT/model.pt-style bundles on a feature set, or on the recordings of a table (--table: "
        "the model's own features, cached): loss, accuracy, UA, macro F1, "
        "per-class precision/recall/F1, confusion matrix (metrics.json, confusion_matrix.png, "
        "per_class.md/.csv, predictions.csv). --rows test scores the rows the model was tested on: the "
        "sources its search held out, else the training run's split re-created from the bundle's metadata "
        "(split protocol, seed, test size). Another corpus: `ser evaluate --model cv/emodb-plus/ensemble.pt "
        "--table tess.csv --shared-classes --out eval/emodb-on-tess` scores an EmoDB model on TESS over the six "
        "emotions both have. MLflow (--tracking): an 'evaluate' run with the metrics and these files.",
    )
    p.add_argument("--model", default=None, help=f"model bundle (model.pt, a folder holding one, or models:/ / runs:/ URI); default ${MODEL_ENV}")
    add_arguments(p, steps.EvaluateRequest)
    _add_device(p)
    add_tracking(p, register=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "transfer",
        help="fine-tune an English model on another label set (Greek) over a freeze x LR x batch grid",
        description="Transfer learning (METHOD.md section 7): replace the last FC layer with a new "
        "one for the feature set's classes, freeze a subset of layers, fine-tune. Subsets: (a) conv1 "
        "bn conv2 conv3 fc1 dropout, (b) up to fc1, (c) up to conv3, (d) up to conv2, (e) conv1+bn, "
        "(f) conv1, (g) nothing. Frozen layers keep requires_grad off AND stay in eval mode (frozen "
        "batch-norm uses the English running statistics; a frozen dropout is off: the only "
        "difference between (a) and (b)). The test split serves as validation, as in the study. "
        "Writes runs.md/.csv (every cell), summary.md/.csv (mean accuracy per subset), and the best "
        "run (lowest test loss): model.pt, metrics.json, learning_curve.png, confusion_matrix.png. MLflow "
        "(--tracking): a 'transfer' run with one child per (subset, LR, batch) cell and the best model, "
        "registered as ser-greek (by label set) with alias challenger and the same promotion gate as train.",
    )
    p.add_argument("--model", default=None, help=f"English model bundle (path or models:/ URI); default ${MODEL_ENV}")
    p.add_argument("--freeze", action="append", default=None, metavar="SUBSETS",
                   help="subsets to try: letters a..g ('g', 'a,c,e', 'aceg') or 'all'; repeatable (default all)")
    add_arguments(p, steps.TransferRequest)
    _add_device(p)
    add_tracking(p)
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser(
        "predict",
        help="print emotion probabilities for audio files",
        description="Decode each file, extract the model's own feature image (the bundle's feature "
        "spec, the same function serving uses) and print the class probabilities, most likely "
        "first. Files that cannot be decoded are reported and skipped (exit status 1).",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files (wav, flac, ogg, aiff)")
    p.add_argument("--model", default=None, help=f"model bundle (path, folder, or models:/ / runs:/ URI); default ${MODEL_ENV}")
    p.add_argument("--top", type=int, default=None, help="print only the K most likely emotions")
    p.add_argument("--json", action="store_true", help="print one JSON object per file (the endpoint's answer) instead of text")
    p.add_argument("--timeline", action="store_true",
                   help="long recordings: slide a window over the file and print an emotion per window")
    p.add_argument("--window", type=float, default=2.0, help="timeline window length in seconds (default 2)")
    p.add_argument("--hop", type=float, default=1.0, help="timeline hop between windows in seconds (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_predict, device="cpu")


# --------------------------------------------------------------------------- train, evaluate, transfer: parse, call the step, print


def _held_out(path: Path) -> tuple[str, ...]:
    from ser.study import search

    try:
        return tuple(search.read_held_out(path))
    except search.SearchError as exc:
        raise UserError(str(exc)) from None


@_tracking_errors
def cmd_train(args: argparse.Namespace) -> int:
    _setup_torch(args)
    from ser import steps
    from ser.adapters import track_runs
    from ser.settings import from_args

    held = _held_out(args.held_out) if args.held_out else ()
    fs_labels = load_features(args.features).label_names
    session = _open_tracking(args)  # strict: fails here, before any training
    req = from_args(steps.TrainRequest, args, config=_read_config(args.config) if args.config else None, preset=args.preset,
                    held_out_sources=held, held_out_from=str(args.held_out or ""), device=args.device, progress=not args.no_progress,
                    register=track_runs.registry_name(fs_labels, args.register, args.no_register))
    result = steps.train(req, session)
    for run in result.runs:
        m = run.metrics
        if run.reused:
            print(f"seed {run.seed}: {run.out} already holds this run (config {m.get('config_hash')}); skipping", file=sys.stderr)
            if run.tracked_as:
                print(f"seed {run.seed}: already tracked as MLflow run {run.tracked_as}", file=sys.stderr)
            continue
        chooser = "test" if m.get("checkpoint") == "test" else "validation"
        print(f"seed {run.seed}: UA {_fraction_pct(m.get('ua'))}, accuracy {_fraction_pct(m.get('accuracy'))}, macro F1 {_fraction_pct(m.get('macro_f1'))}, "
              f"test loss {m.get('loss', float('nan')):.4f} at epoch {m.get('best_epoch')} of {m.get('epochs_run')} (chosen on {chooser}) -> {run.out}")
        if chooser == "test":
            print(f"note: {steps.OPTIMISTIC}")
    if result.summary is not None:
        acc, f1 = result.summary["accuracy"], result.summary["macro_f1"]
        print(f"{len(result.runs)} seeds: accuracy {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f}%, "
              f"macro F1 {100 * f1['mean']:.2f} +- {100 * f1['std']:.2f}% -> {args.out / 'seeds.md'}")
    return 0


@_tracking_errors
def cmd_evaluate(args: argparse.Namespace) -> int:
    _setup_torch(args)
    from ser import steps
    from ser.settings import from_args
    from ser.study.training import resolve_device

    model_path = resolve_model_path(args.model)
    if args.features:
        load_features(args.features)
    session = _open_tracking(args)
    req = from_args(steps.EvaluateRequest, args, model=model_path, model_ref=args.model or os.environ.get(MODEL_ENV) or str(model_path),
                    device=str(resolve_device(args.device)), progress=not args.no_progress)
    result = steps.evaluate(req, session)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    m = result.metrics
    for reason, count in (m.get("rows_left_out") or {}).items():
        print(f"left out {count} rows: {reason}", file=sys.stderr)
    for path, reason in result.problems[:5]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(result.problems) > 5:
        print(f"  ... and {len(result.problems) - 5} more", file=sys.stderr)
    classes = f" over {', '.join(m['classes'])}" if m.get("classes") else ""
    print(f"{result.rows} rows{classes}: UA {_fraction_pct(m['ua'])}, accuracy {_fraction_pct(m['accuracy'])}, "
          f"macro F1 {_fraction_pct(m['macro_f1'])}, loss {m['loss']:.4f} -> {result.out}")
    return 0


@_tracking_errors
def cmd_transfer(args: argparse.Namespace) -> int:
    _setup_torch(args)
    from ser import steps
    from ser.adapters import track_runs
    from ser.study import report
    from ser.settings import from_args

    model_path = resolve_model_path(args.model)
    fs_labels = load_features(args.features).label_names
    req = from_args(steps.TransferRequest, args, model=model_path, freeze=tuple(args.freeze or ["all"]),
                    model_ref=args.model or os.environ.get(MODEL_ENV) or str(model_path), device=args.device, progress=not args.no_progress,
                    register=track_runs.registry_name(fs_labels, args.register, args.no_register))
    session = _open_tracking(args)  # strict: fails here, before any training
    result = steps.transfer(req, session)
    print(report.markdown_table(result.summary, ("subset", "frozen", "runs", "mean_accuracy", "mean_macro_f1", "best_accuracy", "best_lr", "best_batch"), digits=2), end="")
    m, run = result.metrics, result.metrics["transfer"]
    print(f"best run: subset {run['subset']}, lr {run['lr']:.3g}, batch {run['batch_size']}: accuracy {_fraction_pct(m['accuracy'])}, "
          f"macro F1 {_fraction_pct(m['macro_f1'])} at epoch {run['best_epoch']} -> {result.out}")
    return 0


# --------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    """The serving handler's own Predictor, run in-process: same decode, same checks,
    same features, same JSON as the endpoint."""
    _setup_torch(args)
    from ser.serve import serving
    from ser.study.training import resolve_device

    model_path, bundle = _load_bundle(args.model, device=resolve_device("cpu"))
    unlimited = serving.Limits(max_seconds=float("inf"), max_timeline_seconds=float("inf"), max_windows=10**9)
    try:
        predictor = serving.Predictor(bundle, name=model_path.parent.name or "ser", limits=unlimited)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{model_path}: {exc}") from None
    failed = 0
    for path in args.files:
        try:
            data = path.read_bytes()
            if args.timeline:
                result = predictor.timeline(data, window_s=args.window, hop_s=args.hop)
            else:
                result = predictor.predict(data)
        except (serving.RequestError, OSError) as exc:
            print(f"{path}: cannot predict ({exc})", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"file": str(path), **result}))
            continue
        probs = result["probabilities"]
        order = sorted(probs, key=probs.get, reverse=True)[: args.top or len(probs)]
        print(f"{path}: " + ", ".join(f"{label} {probs[label]:.3f}" for label in order))
        for seg in result.get("segments", []):
            what = "(silence)" if seg["silent"] else f"{seg['label']} {seg['probabilities'][seg['label']]:.3f}"
            print(f"  {seg['start_s']:8.2f}-{seg['end_s']:8.2f} s  {what}")
    return 1 if failed else 0
