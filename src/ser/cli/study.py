"""Study commands: train, evaluate, transfer, predict (feature sets -> models -> results).

Heavy imports (torch, numpy, matplotlib) happen inside the handlers so that
``ser --help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ser.cli import UserError, load_feature_set

MODEL_ENV = "SER_MODEL"
OPTIMISTIC = "checkpoint chosen on the TEST rows (the study's rule): this score is optimistic, not what a new voice gets"
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
    resolved by :func:`ser.models_uri.resolve`."""
    text = text or os.environ.get(MODEL_ENV)
    if not text:
        raise UserError(f"no model given: pass --model PATH (or an MLflow models:/ URI), or set {MODEL_ENV}")
    if text.startswith(("models:/", "runs:/")):
        try:
            from ser import models_uri  # written by the tracking side; optional here
        except ImportError as exc:
            raise UserError(f"cannot resolve {text}: MLflow model URIs need ser.models_uri ({exc})") from None
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
    from ser import models

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


def resolve_config(config: dict[str, Any] | None, preset: str | None, image_size: int, n_classes: int):
    """(ArchSpec, TrainConfig) from a config dict and/or preset name, sized for the data."""
    from dataclasses import fields

    from ser import models
    from ser.training import TrainConfig

    arch_fields = {f.name for f in fields(models.ArchSpec)}
    train_fields = {f.name for f in fields(TrainConfig)}
    config = dict(config or {})
    preset = config.pop("preset", None) or preset
    if "arch" in config or "train" in config:
        arch_d, train_d = dict(config.pop("arch", None) or {}), dict(config.pop("train", None) or {})
        extra = set(config)
    else:
        arch_d = {k: v for k, v in config.items() if k in arch_fields}
        train_d = {k: v for k, v in config.items() if k in train_fields}
        extra = set(config) - arch_fields - train_fields
    if extra:
        raise UserError(f"unknown config keys {sorted(extra)}; expected 'arch'/'train' sections or fields of ArchSpec/TrainConfig")
    base: dict[str, Any] = {}
    if preset:
        if preset not in models.PRESETS:
            raise UserError(f"unknown preset {preset!r}; expected one of {sorted(models.PRESETS)}")
        base = models.PRESETS[preset].to_dict()
        base["in_size"], base["n_classes"] = image_size, n_classes
    base.setdefault("in_size", image_size)
    base.setdefault("n_classes", n_classes)
    for key, have in (("in_size", image_size), ("n_classes", n_classes)):
        if key in arch_d and int(float(arch_d[key])) != have:
            what = f"{have}x{have} images" if key == "in_size" else f"{have} classes"
            raise UserError(f"config says {key}={arch_d[key]}, but the feature set has {what}")
    base.update(arch_d)
    try:
        arch = models.spec_from_dict(base)  # a study CNN, or cnn: head / plus
        cfg = TrainConfig.from_dict(train_d)
    except (ValueError, TypeError) as exc:
        raise UserError(f"invalid config: {exc}") from None
    return arch, cfg


def config_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _fraction_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _open_tracking(args: argparse.Namespace):
    """The MLflow session of a command (ser.track_runs); strict tracking that cannot track is a UserError."""
    from ser import track_runs
    from ser.tracking import TrackingError

    try:
        return track_runs.open_session(args.tracking, args.experiment)
    except TrackingError as exc:
        raise UserError(str(exc)) from None


def _tracking_errors(func):
    """A strict-tracking failure during a command ends it as a UserError (exit 2), not a traceback."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        from ser.tracking import TrackingError

        try:
            return func(args)
        except TrackingError as exc:
            raise UserError(str(exc)) from None

    return wrapper


# --------------------------------------------------------------------------- register


def register(sub: argparse._SubParsersAction) -> None:
    from ser.track_runs import add_arguments as add_tracking

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
    p.add_argument("--features", type=Path, required=True, help="feature set (.npz from `ser features`)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    group.add_argument("--preset", default=None, help="named architecture instead of --config: optimal-english (the default "
                       "when neither is given: SquirtleNET, COC 188 156 340, FCOC 3634 2816, batch 32, LR 6e-5)")
    p.add_argument("--split", choices=("random", "speaker"), default="random",
                   help="random: stratified by label (the study; speakers shared); speaker: no speaker in both train and test")
    p.add_argument("--test-size", type=float, default=0.2, help="test fraction (default 0.2)")
    p.add_argument("--held-out", type=Path, default=None, metavar="SEARCH_JSON",
                   help="a search's search.json: test on exactly the rows that search held out (the study's final model; "
                   "--split and --test-size are then not used)")
    p.add_argument("--checkpoint", choices=("validation", "test"), default="validation",
                   help="which rows choose the kept epoch: validation (default: a part of the training side, whole "
                   "speakers held out with --split speaker; the test rows are only scored) or test (the study's rule: "
                   "lowest TEST loss; the score is then optimistic and every report says so)")
    p.add_argument("--val-size", type=float, default=0.2, help="fraction of the training side held out for --checkpoint validation (default 0.2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the config's, else 300)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate the checkpoint rows every K epochs (default: config's, else 1; the study used 10)")
    p.add_argument("--batch-size", type=int, default=None, help="override the config's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the config's learning rate")
    p.add_argument("--seed", type=int, default=0, help="first seed (split, initialisation and shuffling; default 0)")
    p.add_argument("--seeds", type=int, default=1, help="train K times with seeds SEED..SEED+K-1 and report mean/std (default 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16 autocast on CUDA (default fp32)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="write the resume checkpoint every N epochs (default 10)")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep OUT/checkpoint.pt after a finished run (default: delete it)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_device(p)
    add_tracking(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score a model bundle on a feature set: metrics.json + confusion matrix",
        description="Evaluate OUT/model.pt-style bundles on a feature set: loss, accuracy, macro F1, "
        "per-class precision/recall/F1, confusion matrix (metrics.json, confusion_matrix.png, "
        "per_class.md/.csv, predictions.csv). --rows test re-creates the training run's test split "
        "from the bundle's metadata (split protocol, seed, test size). MLflow (--tracking): an 'evaluate' run "
        "with the metrics and these files.",
    )
    p.add_argument("--model", default=None, help=f"model bundle (model.pt, a folder holding one, or models:/ / runs:/ URI); default ${MODEL_ENV}")
    p.add_argument("--features", type=Path, required=True, help="feature set (.npz)")
    p.add_argument("--rows", choices=("all", "test", "train"), default="all", help="which rows to score (default all)")
    p.add_argument("--split", choices=("random", "speaker"), default=None, help="split protocol for --rows test/train (default: the bundle's)")
    p.add_argument("--seed", type=int, default=None, help="split seed for --rows test/train (default: the bundle's)")
    p.add_argument("--test-size", type=float, default=None, help="test fraction for --rows test/train (default: the bundle's, else 0.2)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
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
    p.add_argument("--features", type=Path, required=True, help="target-language feature set (.npz), same image size as the model")
    p.add_argument("--freeze", action="append", default=None, metavar="SUBSETS",
                   help="subsets to try: letters a..g ('g', 'a,c,e', 'aceg') or 'all'; repeatable (default all)")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (default: six log-spaced 1e-6..1e-4)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 16,32,48,64)")
    p.add_argument("--epochs", type=int, default=150, help="epochs per grid cell (default 150, as the study's table)")
    p.add_argument("--eval-every", type=int, default=10, help="evaluate the test split every K epochs (and at the last; default 10)")
    p.add_argument("--cv-folds", type=int, default=0, metavar="K",
                   help="score each grid cell by K-fold cross-validation on the training side, as the study did (5), then "
                   "train the best cell on the whole training side and test it; 0 (default) scores each cell on the test split")
    p.add_argument("--final-epochs", type=int, default=None,
                   help="with --cv-folds: epochs of the final model (default: --epochs; the study trained 2000, best at 615)")
    p.add_argument("--scratch", action="store_true", help="also train the same architecture from scratch (baseline) with --scratch-lrs")
    p.add_argument("--scratch-lrs", default="1e-6,1e-5,1e-4", help="learning rates of the scratch baseline (batch 32; default 1e-6,1e-5,1e-4)")
    p.add_argument("--split", choices=("random", "speaker"), default="random", help="train/test split of the target data (default random)")
    p.add_argument("--test-size", type=float, default=0.2, help="test fraction (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the new head and shuffling (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
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


# --------------------------------------------------------------------------- train


def _run_hash(fs, arch, cfg, args) -> str:
    """What identifies a finished final run on disk (cfg carries the seed; the device does not count)."""
    held_out = getattr(args, "held_out", None)
    split = ("held-out", config_hash(_held_out_sources(held_out))) if held_out else (args.split, args.test_size)
    choice = () if args.checkpoint == "test" else ("validation", args.val_size)  # study-rule runs keep their old hashes
    return config_hash(arch.to_dict(), {k: v for k, v in cfg.to_dict().items() if k != "device"}, *split, fs.spec.key(), *choice)


def _held_out_sources(path: Path) -> list[str]:
    from ser import search

    try:
        return search.read_held_out(path)
    except search.SearchError as exc:
        raise UserError(str(exc)) from None


def _train_one(fs, arch, cfg, args, seed: int, out: Path, features_path: Path, session, register: str | None) -> dict[str, Any]:
    import torch

    from ser import files, models, report, splits, track_runs
    from ser.training import final_train, resolve_device, seed_everything

    cfg = cfg.with_(seed=seed)
    chash = _run_hash(fs, arch, cfg, args)
    if getattr(args, "held_out", None):  # the search's own split: test rows it never saw
        from ser import search

        train_idx, test_idx = search.held_out_rows(fs, _held_out_sources(args.held_out))
        if not test_idx.size:
            raise UserError(f"none of the sources {args.held_out} held out is in {features_path}: not the search's data")
    else:
        try:
            train_idx, test_idx = splits.train_test(fs, args.test_size, seed=seed, protocol=args.split)
        except ValueError as exc:
            raise UserError(f"cannot split {features_path}: {exc}") from None
    val = None
    if args.checkpoint == "validation":
        try:
            fit_idx, val_idx = splits.validation_split(fs, train_idx, args.val_size, seed=seed)
        except ValueError as exc:
            raise UserError(f"cannot carve a validation side from the training rows: {exc} (or use --checkpoint test)") from None
        val = fs.subset(val_idx)
        train = fs.subset(fit_idx)
    else:
        train = fs.subset(train_idx)
    test = fs.subset(test_idx)
    sizes = splits.describe(fs, train_idx, test_idx)
    if val is not None:
        sizes.update(val_rows=len(val), fit_rows=len(train))
    run_args = {"seed": seed, "arch": arch, "cfg": cfg, "spec": fs.spec, "labels": fs.label_names, "split": args.split,
                "test_size": args.test_size, "features": features_path, "config_hash": chash, "sizes": sizes, "out": out}
    test_set = {"features": str(features_path), "split": args.split, "seed": seed, "test_size": args.test_size}
    if getattr(args, "held_out", None):  # the test rows are the search's, not a split drawn here
        test_set["held_out"] = str(args.held_out)
    metrics_path = out / "metrics.json"
    if metrics_path.is_file() and (out / "model.pt").is_file():
        old = files.read_json(metrics_path)
        if old.get("config_hash") == chash:
            print(f"seed {seed}: {out} already holds this run (config {chash}); skipping", file=sys.stderr)
            tracked = session.already_tracked(out, chash)
            if tracked:
                print(f"seed {seed}: already tracked as MLflow run {tracked}", file=sys.stderr)
            elif session.enabled:  # finished while tracking was down: log it from its files now
                with session.final_run(**run_args):
                    session.log_final(out, history=track_runs.read_history(out / "history.csv"), test=test, metrics=old,
                                      feature_spec=fs.spec.to_dict(), register=register, test_set=test_set, config_hash=chash)
            return old
    seed_everything(seed)
    model = models.build(arch)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "config.json", {"arch": arch.to_dict(), "train": cfg.to_dict(), "split": args.split, "test_size": args.test_size, "seed": seed, "features": str(features_path), "feature_spec": fs.spec.to_dict(), "config_hash": chash})
    ckpt = out / "checkpoint.pt"
    with session.final_run(**run_args):
        try:
            result = final_train(model, train, test, cfg, val=val, checkpoint=ckpt, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                                 desc=f"train seed {seed}", on_epoch=session.epoch_callback())
        except ValueError as exc:
            raise UserError(str(exc)) from None
        fitted, ev = result.fit, result.evaluation
        device = resolve_device(cfg.device)
        data = report.metrics(
            ev,
            best_epoch=fitted.best_epoch,
            seed=seed,
            split=args.split,
            config_hash=chash,
            test_size=args.test_size,
            epochs=cfg.epochs,
            epochs_run=fitted.epochs_run,
            eval_every=cfg.eval_every,
            train_seconds=fitted.seconds,
            seconds_per_epoch=fitted.seconds / max(1, fitted.epochs_run),
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            features=str(features_path),
            feature_spec=fs.spec.to_dict(),
            arch=arch.to_dict(),
            train=cfg.to_dict(),
            sizes=sizes,
            loss_note="cross-entropy on logits (the study applied softmax twice; its losses floor near 1.35 and are not comparable)",
            checkpoint=args.checkpoint,
            checkpoint_note=OPTIMISTIC if args.checkpoint == "test" else "epoch chosen on validation rows from the training side; test rows only scored",
        )
        meta = {"seed": seed, "split": args.split, "test_size": args.test_size, "config_hash": chash, "best_epoch": fitted.best_epoch,
                "checkpoint": args.checkpoint, "metrics": {"accuracy": ev.accuracy, "ua": ev.ua, "macro_f1": ev.macro_f1, "loss": ev.loss},
                "train": cfg.to_dict()}
        models.save_bundle(out / "model.pt", model, fs.label_names, fs.spec.to_dict(), meta)
        title = f"{models.DISPLAY[arch.cnn]} seed {seed}, {args.split} split"
        chooser = "test" if args.checkpoint == "test" else "validation"
        report.plot_learning_curve(fitted.history, out / "learning_curve.png", title=title, best_epoch=fitted.best_epoch, eval_name=chooser)
        report.plot_confusion(ev.confusion, ev.labels, out / "confusion_matrix.png", title=f"{title}: test set, epoch {fitted.best_epoch} (chosen on {chooser})")
        report.write_improvements(result.improvements, out / "improvements")
        report.write_table(report.history_rows(fitted.history), out / "history")
        report.write_table(report.per_class_rows(ev.per_class), out / "per_class", ("label", "precision", "recall", "f1", "support"))
        report.write_metrics(metrics_path, data)
        if not args.keep_checkpoint:
            ckpt.unlink(missing_ok=True)
        print(f"seed {seed}: UA {_fraction_pct(ev.ua)}, accuracy {_fraction_pct(ev.accuracy)}, macro F1 {_fraction_pct(ev.macro_f1)}, "
              f"test loss {ev.loss:.4f} at epoch {fitted.best_epoch} of {fitted.epochs_run} (chosen on {chooser}) -> {out}")
        if args.checkpoint == "test":
            print(f"note: {OPTIMISTIC}")
        session.log_final(out, history=fitted.history, test=test, metrics=data, feature_spec=fs.spec.to_dict(), register=register,
                          test_set=test_set, config_hash=chash)
    return data


@_tracking_errors
def cmd_train(args: argparse.Namespace) -> int:
    _setup_torch(args)
    from ser import files, report, track_runs

    fs = load_feature_set(args.features)
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    config = _read_config(args.config) if args.config else None
    preset = args.preset or (None if config else "optimal-english")
    arch, cfg = resolve_config(config, preset, int(fs.images.shape[1]), len(fs.label_names))
    overrides = {"epochs": args.epochs, "eval_every": args.eval_every, "batch_size": args.batch_size, "lr": args.lr, "precision": args.precision}
    try:
        cfg = cfg.with_(device=args.device, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    session = _open_tracking(args)  # strict: fails here, before any training
    register = track_runs.registry_name(fs.label_names, args.register, args.no_register)
    seeds = [args.seed + i for i in range(args.seeds)]
    outs = {seed: args.out if len(seeds) == 1 else args.out / f"seed-{seed}" for seed in seeds}
    runs = []
    tracked = all(session.already_tracked(outs[s], _run_hash(fs, arch, cfg.with_(seed=s), args)) for s in seeds)
    parent = (session.run(f"final {len(seeds)} seeds", "final", params={"seeds": seeds, "arch": arch.to_dict(), "train": cfg.to_dict(),
                                                                         "feature_spec": fs.spec.to_dict(), "split": args.split,
                                                                         "test_size": args.test_size, "features": str(args.features)},
                          tags={"ser.command": "train", "ser.role": "seeds", "ser.out": str(args.out)})
              if len(seeds) > 1 and not tracked else contextlib.nullcontext())  # nothing new to track: no empty parent
    with parent:
        for i, seed in enumerate(seeds):
            # Only the first seed's model (the one OUT/model.pt is) goes to the registry.
            runs.append(_train_one(fs, arch, cfg, args, seed, outs[seed], args.features, session, register if i == 0 else None))
        if len(seeds) > 1:
            summary = report.summarise_seeds(runs)
            files.write_json(args.out / "seeds.json", {"summary": summary, "runs": [{k: r.get(k) for k in ("seed", "accuracy", "macro_f1", "loss", "best_epoch")} for r in runs]})
            report.write_table(report.seeds_rows(runs, summary), args.out / "seeds", ("seed", "accuracy", "macro_f1", "loss", "best_epoch"),
                               title=f"{len(seeds)} seeds, {args.split} split (accuracy and macro F1 in %)",
                               digits={"accuracy": 2, "macro_f1": 2, "loss": 4, "best_epoch": 1})
            # The first seed's run also sits at the top level, so OUT/model.pt and OUT/metrics.json exist either way.
            first = args.out / f"seed-{seeds[0]}"
            for name in ("model.pt", "learning_curve.png", "confusion_matrix.png", "improvements.md", "improvements.csv", "config.json"):
                shutil.copyfile(first / name, args.out / name)
            top = dict(runs[0])
            top["seeds_summary"] = summary
            report.write_metrics(args.out / "metrics.json", top)
            acc, f1 = summary["accuracy"], summary["macro_f1"]
            session.log_metrics({f"test_{name}_{stat}": summary[name][stat] for name in ("accuracy", "macro_f1") for stat in ("mean", "std")})
            session.log_files(args.out, ("seeds.md", "seeds.csv", "seeds.json"))
            print(f"{len(seeds)} seeds: accuracy {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f}%, "
                  f"macro F1 {100 * f1['mean']:.2f} +- {100 * f1['std']:.2f}% -> {args.out / 'seeds.md'}")
    return 0


# --------------------------------------------------------------------------- evaluate


def _check_labels(bundle, fs, model_path: Path, features: Path) -> None:
    if tuple(bundle.labels) != tuple(fs.label_names):
        raise UserError(f"{model_path} predicts {list(bundle.labels)} but {features} is labelled {list(fs.label_names)}")
    size = int(fs.images.shape[1])  # N: the image side, or the height of logmel / encoder frames
    if size != bundle.arch.in_size:
        raise UserError(f"{model_path} takes inputs {bundle.arch.in_size} high, {features} has {size}")
    if bundle.feature_spec and bundle.feature_spec != fs.spec.to_dict():
        print(f"warning: {features} was extracted with {fs.spec.to_dict()}, the model with {bundle.feature_spec}", file=sys.stderr)


@_tracking_errors
def cmd_evaluate(args: argparse.Namespace) -> int:
    _setup_torch(args)
    import numpy as np

    from ser import report, splits
    from ser.training import evaluate, resolve_device

    device = resolve_device(args.device)
    model_path, bundle = _load_bundle(args.model, device=device)
    fs = load_feature_set(args.features)
    _check_labels(bundle, fs, model_path, args.features)
    meta = bundle.meta or {}
    split = seed = test_size = None
    rows = np.arange(len(fs))
    if args.rows != "all":
        split = args.split or meta.get("split") or "random"
        seed = args.seed if args.seed is not None else int(meta.get("seed", 0))
        test_size = args.test_size or float(meta.get("test_size", 0.2))
        try:
            train_idx, test_idx = splits.train_test(fs, test_size, seed=seed, protocol=split)
        except ValueError as exc:
            raise UserError(f"cannot split {args.features}: {exc}") from None
        rows = test_idx if args.rows == "test" else train_idx
    part = fs.subset(rows)
    session = _open_tracking(args)
    model_ref = args.model or os.environ.get(MODEL_ENV) or str(model_path)
    params = {"model": model_ref, "features": str(args.features), "rows": args.rows, "split": split, "seed": seed, "test_size": test_size,
              "batch_size": args.batch_size, "feature_spec": fs.spec.to_dict(), "model_config_hash": meta.get("config_hash")}
    shown = model_ref if model_ref.startswith(("models:/", "runs:/")) else (model_path.parent.name or model_path.name)
    with session.run(f"evaluate {shown} on {args.features.name}", "evaluate", params=params,
                     tags={"ser.command": "evaluate", "ser.model": model_ref, "ser.out": str(args.out)}):
        ev = evaluate(bundle.model, part, batch_size=args.batch_size, device=device)
        data = report.metrics(ev, best_epoch=meta.get("best_epoch"), seed=seed if seed is not None else meta.get("seed"), split=split or meta.get("split"),
                              rows=args.rows, test_size=test_size, model=str(model_path), features=str(args.features), config_hash=meta.get("config_hash"))
        out = args.out
        report.write_metrics(out / "metrics.json", data)
        report.plot_confusion(ev.confusion, ev.labels, out / "confusion_matrix.png", title=f"{model_path.parent.name or model_path.name} on {args.features.name} ({args.rows})")
        report.write_table(report.per_class_rows(ev.per_class), out / "per_class", ("label", "precision", "recall", "f1", "support"))
        pred_rows = [
            {"source_id": part.source_id[i], "speaker": part.speaker[i], "corpus": part.corpus[i], "true": part.label_names[part.labels[i]],
             "predicted": ev.labels[ev.predictions[i]], **{f"p_{name}": float(ev.probabilities[i, j]) for j, name in enumerate(ev.labels)}}
            for i in range(len(part))
        ]
        (out / "predictions.csv").write_text(report.csv_text(pred_rows), encoding="utf-8")
        print(f"{len(part)} rows: accuracy {_fraction_pct(ev.accuracy)}, macro F1 {_fraction_pct(ev.macro_f1)}, loss {ev.loss:.4f} -> {out}")
        session.log_metrics({"accuracy": ev.accuracy, "macro_f1": ev.macro_f1, "loss": ev.loss, "n": len(part),
                             **{f"f1_{label}": values.get("f1") for label, values in ev.per_class.items()}})
        session.log_files(out, ("metrics.json", "confusion_matrix.png", "per_class.md", "per_class.csv", "predictions.csv"))
        session.log_dict(fs.spec.to_dict(), "feature_spec.json")
    return 0


# --------------------------------------------------------------------------- transfer


def _floats(text: str | None, default, name: str) -> tuple:
    if text is None:
        return tuple(default)
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UserError(f"--{name} takes comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"--{name} needs positive numbers, got {text!r}")
    return values


def _transfer_by_cv(args, bundle, train, test, cells, columns, session, out: Path, model_path: Path, device) -> dict[str, Any]:
    """The study's transfer protocol: every cell scored by --cv-folds-fold CV on the
    training side (runs.csv), then the best cell trained on the whole training side
    for --final-epochs and tested on the test split (the only use of those rows)."""
    from ser import report, transfer

    if args.cv_folds < 2:
        raise UserError(f"--cv-folds must be 0 or at least 2, got {args.cv_folds}")
    done = []
    for i, (subset, lr, batch) in enumerate(cells, 1):
        with session.run(f"{subset} lr {lr:.3g} batch {batch} ({args.cv_folds}-fold CV)", "transfer",
                         params={"subset": subset, "lr": lr, "batch_size": batch, "epochs": args.epochs, "cv_folds": args.cv_folds, "seed": args.seed},
                         tags={"ser.role": "cell", "ser.cell": f"{i}/{len(cells)}"}):
            try:
                run = transfer.cross_validate(bundle, train, subset, lr, batch, args.epochs, folds=args.cv_folds, seed=args.seed, protocol=args.split,
                                              device=str(device), eval_every=args.eval_every, progress=not args.no_progress)
            except ValueError as exc:
                raise UserError(f"cannot cross-validate on the training side: {exc}") from None
            session.log_metrics({"cv_accuracy": run.accuracy, "cv_macro_f1": run.macro_f1, "cv_loss": run.test_loss})
        done.append(run)
        report.write_table([r.to_dict() for r in done], out / "runs", (*columns, "scored_on"), title=f"Transfer grid ({args.cv_folds}-fold CV): {model_path} -> {args.features.name}")
    chosen = transfer.best_cell(done)
    epochs = args.final_epochs or args.epochs
    with session.run(f"final {chosen.subset} lr {chosen.lr:.3g} batch {chosen.batch_size}", "transfer",
                     params={"subset": chosen.subset, "lr": chosen.lr, "batch_size": chosen.batch_size, "epochs": epochs, "seed": args.seed},
                     tags={"ser.role": "final"}):
        scratch = chosen.subset == transfer.SCRATCH
        _, best = transfer.run_grid(bundle, train, test, () if scratch else (chosen.subset,), (chosen.lr,), (chosen.batch_size,), epochs, seed=args.seed,
                                    device=str(device), eval_every=args.eval_every, scratch_lrs=(chosen.lr,) if scratch else (),
                                    scratch_batch=chosen.batch_size, progress=not args.no_progress)
        session.log_history(best["history"])
    return {**best, "cv_runs": done}


@_tracking_errors
def cmd_transfer(args: argparse.Namespace) -> int:
    _setup_torch(args)
    from ser import models, report, splits, track_runs, transfer
    from ser.training import evaluate, resolve_device

    device = resolve_device(args.device)
    model_path, bundle = _load_bundle(args.model, device="cpu")
    fs = load_feature_set(args.features)
    try:
        transfer.check_compatible(bundle, fs)
        subsets = transfer.parse_subsets(args.freeze or ["all"])
        for s in subsets:  # fail before training, not after hours of it
            transfer.subset_layers(bundle.model, s)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    lrs = _floats(args.lrs, transfer.DEFAULT_LRS, "lrs")
    batches = tuple(int(b) for b in _floats(args.batches, transfer.DEFAULT_BATCHES, "batches"))
    scratch_lrs = _floats(args.scratch_lrs, transfer.SCRATCH_LRS, "scratch-lrs") if args.scratch else ()
    try:
        train_idx, test_idx = splits.train_test(fs, args.test_size, seed=args.seed, protocol=args.split)
    except ValueError as exc:
        raise UserError(f"cannot split {args.features}: {exc}") from None
    train, test = fs.subset(train_idx), fs.subset(test_idx)
    session = _open_tracking(args)  # strict: fails here, before any training
    register = track_runs.registry_name(fs.label_names, args.register, args.no_register)
    source = args.model or os.environ.get(MODEL_ENV) or str(model_path)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    done: list = []
    best = None
    columns = ("subset", "lr", "batch_size", "epochs", "accuracy", "macro_f1", "test_loss", "best_epoch", "best_accuracy", "best_macro_f1", "best_test_loss", "trainable", "seconds")
    cells = transfer.grid(subsets, lrs, batches, scratch_lrs)
    params = {"source_model": source, "features": str(args.features), "freeze": ",".join(subsets), "lrs": list(lrs), "batches": list(batches),
              "scratch_lrs": list(scratch_lrs), "epochs": args.epochs, "eval_every": args.eval_every, "split": args.split, "cv_folds": args.cv_folds,
              "test_size": args.test_size, "seed": args.seed, "cells": len(cells), "feature_spec": fs.spec.to_dict(), "labels": list(fs.label_names)}
    with session.run(f"transfer {model_path.parent.name or model_path.name} -> {args.features.name}", "transfer", params=params,
                     tags={"ser.command": "transfer", "ser.role": "grid", "ser.source_model": source, "ser.out": str(out)}):
        if args.cv_folds:
            best = _transfer_by_cv(args, bundle, train, test, cells, columns, session, out, model_path, device)
            done = best.pop("cv_runs")
        else:
            for i, (subset, lr, batch) in enumerate(cells, 1):  # one grid cell at a time: a child run each
                scratch = subset == transfer.SCRATCH
                with session.run(f"{subset} lr {lr:.3g} batch {batch}", "transfer", params={"subset": subset, "lr": lr, "batch_size": batch,
                                 "epochs": args.epochs, "eval_every": args.eval_every, "seed": args.seed}, tags={"ser.role": "cell", "ser.cell": f"{i}/{len(cells)}"}):
                    cell_runs, cell_best = transfer.run_grid(bundle, train, test, () if scratch else (subset,), (lr,), (batch,), args.epochs, seed=args.seed,
                                                             device=str(device), eval_every=args.eval_every, scratch_lrs=(lr,) if scratch else (),
                                                             scratch_batch=batch, progress=not args.no_progress)
                    run = cell_runs[0]
                    session.log_history(cell_best["history"])
                    session.log_metrics({"final_accuracy": run.accuracy, "final_macro_f1": run.macro_f1, "final_test_loss": run.test_loss,
                                         **{k: getattr(run, k) for k in ("best_epoch", "best_accuracy", "best_macro_f1", "best_test_loss", "trainable", "seconds")}})
                done.append(run)  # results so far stay on disk if the grid is interrupted
                report.write_table([r.to_dict() for r in done], out / "runs", columns, title=f"Transfer grid: {model_path} -> {args.features.name}")
                if best is None or run.best_test_loss < best["run"].best_test_loss:
                    best = cell_best
        rows = transfer.summary(done)
        report.write_table(rows, out / "summary", title=("Mean last-epoch cross-validated accuracy" if args.cv_folds else "Mean last-epoch test accuracy") + " / macro F1 (%) over the LR x batch grid, per frozen subset",
                           digits={"mean_accuracy": 2, "std_accuracy": 2, "mean_macro_f1": 2, "best_accuracy": 2})
        if best is None:
            raise UserError("empty grid: nothing was trained")
        run = best["run"]
        model = models.build(best["arch"])
        model.load_state_dict(best["state"])
        ev = evaluate(model, test, device=device)
        meta = {"seed": args.seed, "split": args.split, "test_size": args.test_size, "source_model": str(model_path), "transfer": run.to_dict(),
                "best_epoch": run.best_epoch, "metrics": {"accuracy": ev.accuracy, "macro_f1": ev.macro_f1, "loss": ev.loss},
                "config_hash": config_hash(best["arch"].to_dict(), run.to_dict(), args.split, args.test_size, fs.spec.key())}
        models.save_bundle(out / "model.pt", model, fs.label_names, fs.spec.to_dict(), meta)
        data = report.metrics(ev, best_epoch=run.best_epoch, seed=args.seed, split=args.split, transfer=run.to_dict(),
                              source_model=str(model_path), summary=rows, config_hash=meta["config_hash"])
        report.write_metrics(out / "metrics.json", data)
        title = f"transfer ({run.subset}) lr {run.lr:.3g} batch {run.batch_size}"
        report.plot_learning_curve(best["history"], out / "learning_curve.png", title=title, best_epoch=run.best_epoch, eval_name="test")
        report.plot_confusion(ev.confusion, ev.labels, out / "confusion_matrix.png", title=f"{title}: test set")
        print(report.markdown_table(rows, ("subset", "frozen", "runs", "mean_accuracy", "mean_macro_f1", "best_accuracy", "best_lr", "best_batch"), digits=2), end="")
        print(f"best run: subset {run.subset}, lr {run.lr:.3g}, batch {run.batch_size}: accuracy {_fraction_pct(ev.accuracy)}, "
              f"macro F1 {_fraction_pct(ev.macro_f1)} at epoch {run.best_epoch} -> {out}")
        session.set_tags({"ser.best_cell": f"{run.subset} lr {run.lr:.3g} batch {run.batch_size}"})
        session.log_final(out, history=best["history"], test=test, metrics=data, feature_spec=fs.spec.to_dict(), register=register,
                          test_set={"features": str(args.features), "split": args.split, "seed": args.seed, "test_size": args.test_size},
                          config_hash=meta["config_hash"])
    return 0


# --------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    """The serving handler's own Predictor, run in-process: same decode, same checks,
    same features, same JSON as the endpoint."""
    _setup_torch(args)
    from ser import serving
    from ser.training import resolve_device

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
