"""The arrows of the data path as typed steps: ingest, featurize, train, evaluate, transfer,
cross-validate, publish.

Each step is one function, ``request -> result``, with the tracking session passed in
(``ser.adapters.track_runs.Session``; ``track_runs.open_session("off")`` records nothing). The
command line (``ser ingest|features|train|evaluate|transfer|cv``), the Kubeflow components
(``ser.kubeflow.tasks``) and the demo call these functions; none of them calls
another shell. A request is declared once: its fields carry their help text and
become the command's flags (:func:`ser.settings.add_arguments`) and its JSON form
(``to_dict``). A problem the caller can fix is a :class:`StepError`.

Heavy imports (torch, numpy, plotting) happen inside the steps, so importing this
module (``ser --help`` does) costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ser.data.labels import LABEL_SETS
from ser.settings import Settings, option

OPTIMISTIC = "checkpoint chosen on the TEST rows (the study's rule): this score is optimistic, not what a new voice gets"
VALIDATED = "epoch chosen on validation rows from the training side; test rows only scored"
SPLITS = ("random", "speaker")
LABEL_SET_NAMES = tuple(LABEL_SETS)
TRANSFER_COLUMNS = ("subset", "lr", "batch_size", "epochs", "accuracy", "macro_f1", "test_loss", "best_epoch", "best_accuracy",
                    "best_macro_f1", "best_test_loss", "trainable", "seconds")


class StepError(ValueError):
    """A problem the caller can fix (a bad option, data that does not fit the model)."""


def config_hash(*parts: Any) -> str:
    """What identifies a configuration on disk and in the registry (12 hex digits)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _as_paths(request: Any, *names: str) -> None:
    """Path fields given as text (JSON, KFP parameters) become Paths."""
    for name in names:
        value = getattr(request, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(request, name, Path(value))


def numbers(text: str | Sequence[float] | None, name: str, cast: type = float) -> tuple | None:
    """Comma-separated positive numbers ("1e-5,2e-5") or a sequence of them, as a tuple; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(cast(float(v)) for v in (text.replace(" ", "").split(",") if isinstance(text, str) else text) if v != "")
    except ValueError:
        raise StepError(f"{name} takes comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise StepError(f"{name} needs positive numbers, got {text!r}")
    return values


# --------------------------------------------------------------------------- ingest


CORPUS_NAMES = ("ravdess", "tess", "savee", "cremad", "aesdd", "emodb", "synthetic")


def corpus_pairs(items: Sequence[str]) -> tuple[tuple[str, Path], ...]:
    """``("tess=data/tess", ...)`` -> ((name, folder), ...), names checked (folders are
    checked when the step runs: the pipeline names its folders before it downloads them)."""
    pairs = []
    for item in items:
        name, sep, folder = str(item).partition("=")
        name = name.strip()
        if not sep or not name or not folder.strip():
            raise StepError(f"corpus: expected NAME=DIR, got {item!r}")
        if name not in CORPUS_NAMES:
            raise StepError(f"unknown corpus {name!r}; expected one of {', '.join(CORPUS_NAMES)}")
        pairs.append((name, Path(folder.strip())))
    if not pairs:
        raise StepError("corpus: nothing given (expected NAME=DIR, repeatable)")
    return tuple(pairs)


@dataclass(frozen=True)
class IngestRequest(Settings):
    """Corpus folders as distributed -> one utterance table, and every file that cannot be used, with its reason."""

    corpus: tuple[str, ...] = option(help=f"corpus name ({', '.join(CORPUS_NAMES)}) and its folder; repeatable",
                                     metavar="NAME=DIR", action="append")
    out: Path = option(help="utterance table to write (CSV)")
    select: str = option("all", choices=("all", "study"),
                         help="'study' reproduces the study's Table 1 selection (RAVDESS without calm, TESS without its two "
                         "unreadable files, all SAVEE, CREMA-D by the IEO LO/MD/HI rule + 509 random neutral)")
    seed: int = option(0, help="seed of the CREMA-D neutral draw (--select study)")
    problems: Path | None = option(None, help="problems CSV (default: OUT with .problems.csv)")
    relative: bool = option(False, cli=False)  # paths relative to the table's folder (a pipeline artifact moves)
    progress: bool = option(True, cli=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", tuple(self.corpus or ()))
        _as_paths(self, "out", "problems")
        corpus_pairs(self.corpus)

    @property
    def problems_path(self) -> Path:
        return self.problems or self.out.with_suffix(".problems.csv")


@dataclass
class IngestResult:
    rows: list  # ser.data.corpora.Utterance
    problems: list  # ser.data.corpora.Problem
    table: Path
    problems_path: Path

    def counts(self) -> tuple[list[str], list[dict[str, Any]]]:
        """(columns, rows) of files per emotion and corpus, with totals."""
        from ser.data import corpora

        return corpora.class_counts(self.rows)


def ingest(req: IngestRequest) -> IngestResult:
    """Scan each corpus folder (:func:`ser.data.corpora.scan`: a file that cannot be used
    is listed with its reason, never dropped silently), apply the selection and write
    the table and the problems CSV."""
    from dataclasses import replace

    from ser import files
    from ser.data import corpora

    groups: dict[str, list] = {}
    problems: list = []
    for name, root in corpus_pairs(req.corpus):
        if not root.is_dir():
            raise StepError(f"corpus folder not found: {root}")
        try:
            result = corpora.scan(name, root, progress=req.progress)
        except ValueError as exc:
            raise StepError(str(exc)) from None
        for row in result.rows:
            groups.setdefault(row.corpus, []).append(row)
        problems += result.problems
    rows = corpora.select_study(groups, req.seed) if req.select == "study" else [r for g in groups.values() for r in g]
    written, listed = rows, problems
    if req.relative:
        base = req.out.parent.resolve()
        written = [replace(r, path=files.relative_to(r.path, base)) for r in rows]
        listed = [replace(p, path=files.relative_to(p.path, base)) for p in problems]
    corpora.write_table(written, req.out)
    corpora.write_problems(listed, req.problems_path)
    return IngestResult(rows, problems, req.out, req.problems_path)


# --------------------------------------------------------------------------- featurize


FEATURE_KINDS = ("mel", "chroma", "mfcc", "whisper")


def sample_rate(text: str | int | None) -> int | None:
    """A rate in Hz, or 'native' / None (each file at its own rate, no resampling)."""
    import argparse

    if text is None or str(text).strip().lower() == "native":
        return None
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in Hz or 'native', got {text!r}") from None
    if not 4000 <= rate <= 192000:
        raise argparse.ArgumentTypeError(f"rate {rate} Hz is outside 4000..192000")
    return rate


def feature_file(kind: str, size: int) -> str:
    """The name of a feature set in a folder of them (the pipeline's features output)."""
    return f"{kind}-{int(size)}.npz"


@dataclass(frozen=True)
class FeaturizeRequest(Settings):
    """An utterance table -> one feature set (.npz): an image (or encoder embedding) per row, labels, speakers, sources, the spec."""

    table: Path = option(help="utterance table (from ingest or augment)")
    out: Path = option(help="feature set to write (.npz), or a folder: KIND-SIZE.npz inside it")
    feature: str = option("mel", choices=FEATURE_KINDS,
                          help="spectral feature (default mel), or whisper: the frozen encoder's embeddings, one per 20 ms "
                          "(needs pip install 'ser[encoder]'; 16 kHz; for the whisper recipe's head)")
    size: int = option(60, help="N: frequency bins and image side (study: 30 50 60 80); whisper: the encoder's width, found by itself")
    encoder: str = option("base", help="whisper: a faster-whisper size (tiny, base, small ...) or a directory of converted files (default base)")
    encoder_window: int = option(30, help="whisper: seconds each utterance is padded to before encoding (30, Whisper's own window, is "
                                 "the measured best; 0 = no padding, 20-30 times cheaper on a 3 s clip) (default 30)")
    encoder_layers: str = option("all", choices=("all", "last"),
                                 help="whisper: all = every hidden state of the encoder, stacked, for the head to weigh (the "
                                 "measured best on unseen speakers; 7 x the width); last = the encoder's output only (default all)")
    rate: int | None = option(16000, type=sample_rate,
                              help="resample every file to this rate in Hz (default 16000: a recording then gives the same image at "
                              "any rate it arrives at); 'native' keeps each corpus at its own rate, as the study did")
    labels: str = option("english", choices=LABEL_SET_NAMES,
                         help="label set, i.e. which classes this run keeps (rows outside it are reported and left out): english (the "
                         "study's 7, with surprise), greek (AESDD's 5), emodb (EmoDB's 7, with boredom), basic6 (angry disgust fearful "
                         "happy neutral sad, shared by EmoDB and the English corpora), basic4 (angry happy neutral sad)")
    cache: Path = option(Path(".ser/cache/features"), help="feature cache folder (keyed by file hash and spec: a second run does no work)")
    workers: int | None = option(None, help="processes (default: all cores)")
    roots: tuple[Path, ...] = option((), cli=False)  # folders the table's relative paths resolve against (pipeline artifacts)
    progress: bool = option(True, cli=False)

    def __post_init__(self) -> None:
        _as_paths(self, "table", "out", "cache")
        object.__setattr__(self, "roots", tuple(Path(r) for r in self.roots))
        if self.feature not in FEATURE_KINDS:
            raise StepError(f"unknown feature {self.feature!r}; expected one of {', '.join(FEATURE_KINDS)}")

    def spec(self):
        """The feature spec this request asks for (whisper: its width is found when it runs)."""
        from ser.data.features import FeatureSpec

        extra = {"encoder": self.encoder, "encoder_window": self.encoder_window, "encoder_layers": self.encoder_layers} if self.feature == "whisper" else {}
        try:
            return FeatureSpec.for_kind(self.feature, self.size, self.rate, **extra)
        except ValueError as exc:
            raise StepError(str(exc)) from None


@dataclass
class FeaturizeResult:
    path: Path
    features: Any  # ser.data.dataset.FeatureSet
    report: Any  # ser.data.dataset.ExtractionReport
    problems_path: Path
    seconds: float


def table_features(table: Path, spec, labels: str, cache: Path, *, roots: Sequence[Path] = (), workers: int | None = None,
            progress: bool = True):
    """(feature set, report) of a table's rows with ``spec``, through the on-disk cache;
    a missing table or file, an encoder that cannot load, or no usable row is a StepError."""
    from ser.data import dataset, encoder, tables

    try:
        rows = tables.read_rows(table, roots=roots)
        fs, report = dataset.build(rows, spec, labels=labels, cache_dir=cache, workers=workers, progress=progress)
    except (FileNotFoundError, encoder.EncoderError) as exc:
        raise StepError(str(exc)) from None
    if len(fs) == 0:
        raise StepError(f"no usable rows in {table} for the {labels} label set")
    return fs, report


def featurize(req: FeaturizeRequest) -> FeaturizeResult:
    """Extract one feature image per table row on every core, through the on-disk cache
    (an interrupted run resumes, a second one does no work). Rows outside the label set
    and files that cannot be decoded are listed in ``*.problems.csv`` beside the set."""
    import time

    from ser.data import tables

    start = time.perf_counter()
    fs, report = table_features(req.table, req.spec(), req.labels, req.cache, roots=req.roots, workers=req.workers, progress=req.progress)
    fs.meta.update({"table": str(req.table), "problems": len(report.problems)})
    path = req.out / feature_file(fs.spec.kind, fs.spec.size) if req.out.is_dir() or not req.out.suffix else req.out
    fs.save(path)
    problems_path = path.with_suffix(".problems.csv")
    tables.write_problems(report.problems, problems_path)
    return FeaturizeResult(path, fs, report, problems_path, time.perf_counter() - start)


# --------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainRequest(Settings):
    """A final training (METHOD.md section 7) of one configuration on one feature set."""

    features: Path = option(help="feature set (.npz from `ser features`)")
    out: Path = option(help="output folder")
    config: dict[str, Any] | None = option(None, cli=False, help="arch/train settings (ArchSpec and TrainConfig fields; 'preset' starts from a named one)")
    preset: str | None = option(None, cli=False, help="named architecture when config gives none")
    split: str = option("random", choices=SPLITS,
                        help="random: stratified by label (the study; speakers shared); speaker: no speaker in both train and test")
    test_size: float = option(0.2, help="test fraction (default 0.2)")
    held_out_sources: tuple[str, ...] = option((), cli=False,
                                               help="test on exactly these sources (a search's held-out side); split and test_size are then not used")
    held_out_from: str = option("", cli=False, help="where held_out_sources came from (reports and tags)")
    checkpoint: str = option("validation", choices=("validation", "test"),
                             help="which rows choose the kept epoch: validation (default: a part of the training side, whole "
                             "speakers held out with --split speaker; the test rows are only scored) or test (the study's rule: "
                             "lowest TEST loss; the score is then optimistic and every report says so)")
    val_size: float = option(0.2, help="fraction of the training side held out for --checkpoint validation (default 0.2)")
    epochs: int | None = option(None, help="epochs to train (default: the config's, else 300)")
    eval_every: int | None = option(None, help="evaluate the checkpoint rows every K epochs (default: config's, else 1; the study used 10)")
    batch_size: int | None = option(None, help="override the config's batch size")
    lr: float | None = option(None, help="override the config's learning rate")
    seed: int = option(0, help="first seed (split, initialisation and shuffling; default 0)")
    seeds: int = option(1, help="train K times with seeds SEED..SEED+K-1 and report mean/std (default 1)")
    precision: str | None = option(None, choices=("fp32", "bf16"), help="bf16 autocast on CUDA (default fp32)")
    checkpoint_every: int = option(10, help="write the resume checkpoint every N epochs (default 10)")
    keep_checkpoint: bool = option(False, help="keep OUT/checkpoint.pt after a finished run (default: delete it)")
    device: str = option("auto", cli=False, help="auto, cpu or cuda")
    progress: bool = option(True, cli=False, help="progress bars")
    register: str | None = option(None, cli=False, help="registered model name (None: log the model, register nothing)")

    def __post_init__(self) -> None:
        _as_paths(self, "features", "out")
        object.__setattr__(self, "held_out_sources", tuple(str(s) for s in self.held_out_sources))
        if self.seeds < 1:
            raise StepError("seeds must be at least 1")
        if self.split not in SPLITS:
            raise StepError(f"split must be one of {SPLITS}, got {self.split!r}")


@dataclass
class TrainRun:
    """One seed's outcome: its metrics.json, and whether it was found finished on disk."""

    seed: int
    out: Path
    metrics: dict[str, Any]
    reused: bool = False
    tracked_as: str | None = None


@dataclass
class TrainResult:
    out: Path
    runs: list[TrainRun]
    summary: dict[str, Any] | None = None  # mean/std over seeds (seeds > 1)

    @property
    def metrics(self) -> dict[str, Any]:
        """OUT/metrics.json: the first seed's (with the seeds' summary when there are several)."""
        data = dict(self.runs[0].metrics)
        if self.summary is not None:
            data["seeds_summary"] = self.summary
        return data


def resolve_config(config: dict[str, Any] | None, preset: str | None, image_size: int, n_classes: int, layers: int = 1):
    """(ArchSpec or another model spec, TrainConfig) from a config dict and/or preset name, sized for the data
    (``layers``: encoder layers stacked in each feature frame, for the whisper head)."""
    from dataclasses import fields

    from ser.study import models
    from ser.study.training import TrainConfig

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
        raise StepError(f"unknown config keys {sorted(extra)}; expected 'arch'/'train' sections or fields of ArchSpec/TrainConfig")
    base: dict[str, Any] = {}
    if preset:
        if preset not in models.PRESETS:
            raise StepError(f"unknown preset {preset!r}; expected one of {sorted(models.PRESETS)}")
        base = models.PRESETS[preset].to_dict()
        base["in_size"], base["n_classes"] = image_size, n_classes
    base.setdefault("in_size", image_size)
    base.setdefault("n_classes", n_classes)
    for key, have in (("in_size", image_size), ("n_classes", n_classes)):
        if key in arch_d and int(float(arch_d[key])) != have:
            what = f"{have}x{have} images" if key == "in_size" else f"{have} classes"
            raise StepError(f"config says {key}={arch_d[key]}, but the feature set has {what}")
    base.update(arch_d)
    if base.get("cnn") == "head":
        base.setdefault("layers", layers)
    try:
        arch = models.spec_from_dict(base)  # a study CNN, or cnn: head / plus
        cfg = TrainConfig.from_dict(train_d)
    except (ValueError, TypeError) as exc:
        raise StepError(f"invalid config: {exc}") from None
    return arch, cfg


def load_features(path: str | Path):
    """A feature set for a step, or a StepError that says what to do."""
    from ser.data.dataset import FeatureSet

    if not Path(path).is_file():
        raise StepError(f"feature set {path} does not exist (make one with `ser features`)")
    try:
        fs = FeatureSet.load(path)
    except (ValueError, KeyError) as exc:
        raise StepError(f"{path} is not a feature set file: {exc}") from None
    if len(fs) == 0:
        raise StepError(f"feature set {path} holds no rows")
    return fs


def _train_setup(req: TrainRequest):
    """(feature set, model spec, TrainConfig with the request's overrides)."""
    from ser.data.features import stacked_layers

    fs = load_features(req.features)
    preset = req.preset or (None if req.config else "optimal-english")
    arch, cfg = resolve_config(req.config, preset, int(fs.images.shape[1]), len(fs.label_names), stacked_layers(fs.spec))
    overrides = {"epochs": req.epochs, "eval_every": req.eval_every, "batch_size": req.batch_size, "lr": req.lr, "precision": req.precision}
    try:
        cfg = cfg.with_(device=req.device, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise StepError(str(exc)) from None
    return fs, arch, cfg


def _run_hash(req: TrainRequest, fs, arch, cfg) -> str:
    """What identifies a finished run on disk (cfg carries the seed; the device does not count)."""
    split = ("held-out", config_hash(sorted(req.held_out_sources))) if req.held_out_sources else (req.split, req.test_size)
    choice = () if req.checkpoint == "test" else ("validation", req.val_size)  # study-rule runs keep their old hashes
    return config_hash(arch.to_dict(), {k: v for k, v in cfg.to_dict().items() if k != "device"}, *split, fs.spec.key(), *choice)


def _train_seed(req: TrainRequest, fs, arch, cfg, seed: int, out: Path, session, register: str | None) -> TrainRun:
    import torch

    from ser import files
    from ser.adapters import track_runs
    from ser.study import models, report, splits
    from ser.study.training import final_train, resolve_device, seed_everything

    cfg = cfg.with_(seed=seed)
    chash = _run_hash(req, fs, arch, cfg)
    if req.held_out_sources:  # the search's own split: test rows it never saw
        train_idx, test_idx = splits.held_out_rows(fs, req.held_out_sources)
        if not test_idx.size:
            raise StepError(f"none of the sources held out ({req.held_out_from or 'given'}) is in {req.features}: not the search's data")
    else:
        try:
            train_idx, test_idx = splits.train_test(fs, req.test_size, seed=seed, protocol=req.split)
        except ValueError as exc:
            raise StepError(f"cannot split {req.features}: {exc}") from None
    val = None
    if req.checkpoint == "validation":
        try:
            fit_idx, val_idx = splits.validation_split(fs, train_idx, req.val_size, seed=seed)
        except ValueError as exc:
            raise StepError(f"cannot carve a validation side from the training rows: {exc} (or use checkpoint test)") from None
        val, train = fs.subset(val_idx), fs.subset(fit_idx)
    else:
        train = fs.subset(train_idx)
    test = fs.subset(test_idx)
    sizes = splits.describe(fs, train_idx, test_idx)
    if val is not None:
        sizes.update(val_rows=len(val), fit_rows=len(train))
    run_args = {"seed": seed, "arch": arch, "cfg": cfg, "spec": fs.spec, "labels": fs.label_names, "split": req.split,
                "test_size": req.test_size, "features": req.features, "config_hash": chash, "sizes": sizes, "out": out}
    test_set = {"features": str(req.features), "split": req.split, "seed": seed, "test_size": req.test_size}
    if req.held_out_sources:  # the test rows are the search's, not a split drawn here
        test_set["held_out"] = req.held_out_from or f"{len(req.held_out_sources)} sources"
    metrics_path = out / "metrics.json"
    if metrics_path.is_file() and (out / "model.pt").is_file():
        old = files.read_json(metrics_path)
        if old.get("config_hash") == chash:
            tracked = session.already_tracked(out, chash)
            if not tracked and session.enabled:  # finished while tracking was down: log it from its files now
                with session.final_run(**run_args):
                    session.log_final(out, history=track_runs.read_history(out / "history.csv"), test=test, metrics=old,
                                      feature_spec=fs.spec.to_dict(), register=register, test_set=test_set, config_hash=chash)
            return TrainRun(seed, out, old, reused=True, tracked_as=tracked)
    seed_everything(seed)
    try:
        model = models.build(arch)
    except ValueError as exc:
        raise StepError(f"invalid config: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "config.json", {"arch": arch.to_dict(), "train": cfg.to_dict(), "split": req.split, "test_size": req.test_size,
                                           "seed": seed, "features": str(req.features), "feature_spec": fs.spec.to_dict(), "config_hash": chash})
    ckpt = out / "checkpoint.pt"
    with session.final_run(**run_args):
        try:
            result = final_train(model, train, test, cfg, val=val, checkpoint=ckpt, progress=req.progress, checkpoint_every=req.checkpoint_every,
                                 desc=f"train seed {seed}", on_epoch=session.epoch_callback())
        except ValueError as exc:
            raise StepError(str(exc)) from None
        fitted, ev = result.fit, result.evaluation
        device = resolve_device(cfg.device)
        data = report.metrics(
            ev, best_epoch=fitted.best_epoch, seed=seed, split=req.split, config_hash=chash, test_size=req.test_size,
            epochs=cfg.epochs, epochs_run=fitted.epochs_run, eval_every=cfg.eval_every, train_seconds=fitted.seconds,
            seconds_per_epoch=fitted.seconds / max(1, fitted.epochs_run),
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            features=str(req.features), feature_spec=fs.spec.to_dict(), arch=arch.to_dict(), train=cfg.to_dict(), sizes=sizes,
            loss_note="cross-entropy on logits (the study applied softmax twice; its losses floor near 1.35 and are not comparable)",
            checkpoint=req.checkpoint, checkpoint_note=OPTIMISTIC if req.checkpoint == "test" else VALIDATED,
            **({"held_out": test_set["held_out"]} if req.held_out_sources else {}),
        )
        meta = {"seed": seed, "split": req.split, "test_size": req.test_size, "config_hash": chash, "best_epoch": fitted.best_epoch,
                "checkpoint": req.checkpoint, "metrics": {"accuracy": ev.accuracy, "ua": ev.ua, "macro_f1": ev.macro_f1, "loss": ev.loss},
                "train": cfg.to_dict()}
        if req.held_out_sources:  # evaluation and the champion gate score these rows again
            meta["held_out_sources"] = sorted(req.held_out_sources)
        models.save_bundle(out / "model.pt", model, fs.label_names, fs.spec.to_dict(), meta)
        title = f"{models.DISPLAY[arch.cnn]} seed {seed}, {req.split} split"
        chooser = "test" if req.checkpoint == "test" else "validation"
        report.plot_learning_curve(fitted.history, out / "learning_curve.png", title=title, best_epoch=fitted.best_epoch, eval_name=chooser)
        report.plot_confusion(ev.confusion, ev.labels, out / "confusion_matrix.png", title=f"{title}: test set, epoch {fitted.best_epoch} (chosen on {chooser})")
        report.write_improvements(result.improvements, out / "improvements")
        report.write_table(report.history_rows(fitted.history), out / "history")
        report.write_table(report.per_class_rows(ev.per_class), out / "per_class", ("label", "precision", "recall", "f1", "support"))
        report.write_metrics(metrics_path, data)
        if not req.keep_checkpoint:
            ckpt.unlink(missing_ok=True)
        session.log_final(out, history=fitted.history, test=test, metrics=data, feature_spec=fs.spec.to_dict(), register=register,
                          test_set=test_set, config_hash=chash)
    return TrainRun(seed, out, data)


def train(req: TrainRequest, session) -> TrainResult:
    """Train ``req.seeds`` models (one per seed) and score each on its test rows.

    The epoch kept is chosen on validation rows carved from the training side
    (``checkpoint="test"``: the study's rule, labelled optimistic). OUT gets model.pt,
    metrics.json, learning_curve.png, confusion_matrix.png, improvements.md/.csv,
    history.csv, per_class.md/.csv and config.json; several seeds get a subfolder each
    plus seeds.md/.csv/.json, and the first seed's files at the top. A finished run
    found on disk (same configuration) is not trained again; a killed one resumes from
    its checkpoint. Tracking: one "final" run per seed (under a parent with several),
    the first seed's model registered as ``req.register`` with the promotion gate."""
    from ser import files
    from ser.study import report

    fs, arch, cfg = _train_setup(req)
    seeds = [req.seed + i for i in range(req.seeds)]
    outs = {seed: req.out if len(seeds) == 1 else req.out / f"seed-{seed}" for seed in seeds}
    tracked = all(session.already_tracked(outs[s], _run_hash(req, fs, arch, cfg.with_(seed=s))) for s in seeds)
    parent = (session.run(f"final {len(seeds)} seeds", "final", params={"seeds": seeds, "arch": arch.to_dict(), "train": cfg.to_dict(),
                                                                         "feature_spec": fs.spec.to_dict(), "split": req.split,
                                                                         "test_size": req.test_size, "features": str(req.features)},
                          tags={"ser.command": "train", "ser.role": "seeds", "ser.out": str(req.out)})
              if len(seeds) > 1 and not tracked else contextlib.nullcontext())  # nothing new to track: no empty parent
    runs: list[TrainRun] = []
    summary = None
    with parent:
        for i, seed in enumerate(seeds):
            # Only the first seed's model (the one OUT/model.pt is) goes to the registry.
            runs.append(_train_seed(req, fs, arch, cfg, seed, outs[seed], session, req.register if i == 0 else None))
        if len(seeds) > 1:
            metrics = [r.metrics for r in runs]
            summary = report.summarise_seeds(metrics)
            files.write_json(req.out / "seeds.json", {"summary": summary, "runs": [{k: m.get(k) for k in ("seed", "accuracy", "macro_f1", "loss", "best_epoch")} for m in metrics]})
            report.write_table(report.seeds_rows(metrics, summary), req.out / "seeds", ("seed", "accuracy", "macro_f1", "loss", "best_epoch"),
                               title=f"{len(seeds)} seeds, {req.split} split (accuracy and macro F1 in %)",
                               digits={"accuracy": 2, "macro_f1": 2, "loss": 4, "best_epoch": 1})
            # The first seed's run also sits at the top level, so OUT/model.pt and OUT/metrics.json exist either way.
            first = req.out / f"seed-{seeds[0]}"
            for name in ("model.pt", "learning_curve.png", "confusion_matrix.png", "improvements.md", "improvements.csv", "config.json"):
                shutil.copyfile(first / name, req.out / name)
            result = TrainResult(req.out, runs, summary)
            report.write_metrics(req.out / "metrics.json", result.metrics)
            session.log_metrics({f"test_{name}_{stat}": summary[name][stat] for name in ("accuracy", "macro_f1") for stat in ("mean", "std")})
            session.log_files(req.out, ("seeds.md", "seeds.csv", "seeds.json"))
    return TrainResult(req.out, runs, summary)


# --------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvaluateRequest(Settings):
    """Scores of a model bundle on a feature set, or on a table of recordings (another corpus, say)."""

    model: Path = option(cli=False, help="the model bundle file (model.pt)")
    out: Path = option(help="output folder")
    features: Path | None = option(None, help="feature set (.npz) to score")
    table: Path | None = option(None, help="utterance table (from `ser ingest`) to score instead of --features: its recordings "
                                "get the model's own features (the bundle's spec; cached)")
    labels: str | None = option(None, choices=LABEL_SET_NAMES, help="label set for --table (default: the one the model predicts)")
    shared_classes: bool = option(False, help="score on the classes the model knows that occur in the rows: rows of other "
                                  "classes are left out and the model's other outputs ignored (another corpus: EmoDB's "
                                  "boredom, English surprise)")
    cache: Path = option(Path(".ser/cache/features"), help="feature cache folder (with --table)")
    rows: str = option("all", choices=("all", "test", "train"), help="which rows to score (default all)")
    split: str | None = option(None, choices=SPLITS, help="split protocol for --rows test/train (default: the bundle's)")
    seed: int | None = option(None, help="split seed for --rows test/train (default: the bundle's)")
    test_size: float | None = option(None, help="test fraction for --rows test/train (default: the bundle's, else 0.2)")
    batch_size: int = option(256, help="evaluation batch size (default 256)")
    model_ref: str = option("", cli=False, help="how the caller named the model (a path or a models:/ URI), for the record")
    device: str = option("auto", cli=False, help="auto, cpu or cuda")
    progress: bool = option(True, cli=False)

    def __post_init__(self) -> None:
        _as_paths(self, "model", "features", "table", "out", "cache")
        if (self.table is None) == (self.features is None):
            raise StepError("evaluate takes exactly one of a feature set (--features) or a table (--table)")
        if self.labels is not None and self.table is None:
            raise StepError("--labels chooses the classes of a --table; a feature set keeps its own")


@dataclass
class EvaluateResult:
    out: Path
    metrics: dict[str, Any]
    rows: int
    warnings: list[str] = field(default_factory=list)
    run_id: str | None = None  # the MLflow run that holds these scores (None untracked)
    problems: list = field(default_factory=list)  # (path, reason) of --table files that could not be read


def load_model(path: str | Path, device: Any = "cpu"):
    """A model bundle, or a StepError naming the file and what is wrong with it."""
    from ser.study import models

    try:
        return models.load_bundle(path, device=device)
    except Exception as exc:  # torn file, foreign pickle, unknown spec: all the caller's to fix
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise StepError(f"{path}: cannot load model bundle ({type(exc).__name__}: {first})") from None


def check_fits(bundle, fs, model: Path | str, features: Path | str, shared: bool = False) -> list[str]:
    """Refuse a feature set the model cannot score (labels, unless ``shared``; input height);
    warnings for a different spec."""
    if tuple(bundle.labels) != tuple(fs.label_names) and not shared:
        raise StepError(f"{model} predicts {list(bundle.labels)} but {features} is labelled {list(fs.label_names)}; "
                        "--shared-classes scores the classes both know")
    size = int(fs.images.shape[1])  # N: the image side, or the height of logmel / encoder frames
    if size != bundle.arch.in_size:
        raise StepError(f"{model} takes inputs {bundle.arch.in_size} high, {features} has {size}")
    if bundle.feature_spec and bundle.feature_spec != fs.spec.to_dict():
        return [f"{features} was extracted with {fs.spec.to_dict()}, the model with {bundle.feature_spec}"]
    return []


def model_label_set(labels: Sequence[str]) -> str:
    """The name of the label set a model predicts (what a table is read with by default)."""
    for name, names in LABEL_SETS.items():
        if tuple(names) == tuple(labels):
            return name
    raise StepError(f"the model predicts {list(labels)}, which is none of the label sets {list(LABEL_SETS)}: give --labels")


def shared_classes(model, labels: Sequence[str], fs):
    """(model, rows, classes, ignored outputs): ``model`` scored only on its classes that occur
    in ``fs``, and ``fs``'s rows of those classes relabelled to them."""
    from ser.study import models

    present = {name for name, count in fs.class_counts().items() if count}
    classes = tuple(name for name in labels if name in present)
    if not classes:
        raise StepError(f"the model predicts {list(labels)}, the rows hold {sorted(present)}: no class in common")
    keep = [list(labels).index(name) for name in classes]
    ignored = [name for name in labels if name not in classes]
    return (models.OutputSubset(model, keep) if ignored else model), fs.keep_classes(classes), classes, ignored


def evaluate(req: EvaluateRequest, session) -> EvaluateResult:
    """Score ``req.model`` on ``req.rows`` of ``req.features`` (or of ``req.table``'s recordings,
    featurised with the model's own spec): metrics.json, confusion_matrix.png, per_class.md/.csv
    and predictions.csv in OUT. ``rows="test"`` scores the rows the model was tested on when it
    was trained (the held-out sources of a search, else its split); ``shared_classes`` scores
    it on another corpus's rows of the emotions both know."""
    import numpy as np

    from ser.data.features import FeatureSpec
    from ser.study import report, splits
    from ser.study.training import evaluate as score
    from ser.study.training import resolve_device

    device = resolve_device(req.device)
    bundle = load_model(req.model, device=device)
    source = req.table or req.features
    left_out: dict[str, int] = {}
    problems: list = []
    if req.table is not None:
        if not bundle.feature_spec:
            raise StepError(f"{req.model} does not record its feature spec: extract a feature set and give --features")
        labels = req.labels or model_label_set(bundle.labels)
        fs, extraction = table_features(req.table, FeatureSpec.from_dict(bundle.feature_spec), labels, req.cache, progress=req.progress)
        for path, reason in extraction.problems:  # a class outside the label set, or a file that cannot be read
            if not reason.startswith("emotion "):
                problems.append((path, reason))
                reason = "could not be read"
            left_out[reason] = left_out.get(reason, 0) + 1
    else:
        fs = load_features(req.features)
    warnings = check_fits(bundle, fs, req.model, source, shared=req.shared_classes)
    meta = bundle.meta or {}
    split = seed = test_size = None
    rows = np.arange(len(fs))
    if req.rows != "all":
        try:
            train_idx, test_idx = splits.recorded_split(fs, meta, split=req.split, seed=req.seed, test_size=req.test_size)
        except ValueError as exc:
            raise StepError(f"cannot split {source}: {exc}") from None
        rows = test_idx if req.rows == "test" else train_idx
        if not meta.get("held_out_sources") or any(v is not None for v in (req.split, req.seed, req.test_size)):
            split = req.split or meta.get("split") or "random"
            seed = req.seed if req.seed is not None else int(meta.get("seed", 0))
            test_size = req.test_size or float(meta.get("test_size", 0.2))
    part = fs if req.rows == "all" else fs.subset(rows)  # a whole encoder set is gigabytes: no copy
    network, classes, ignored = bundle.model, tuple(bundle.labels), []
    if req.shared_classes:
        network, shared, classes, ignored = shared_classes(bundle.model, bundle.labels, part)
        for name, count in part.class_counts().items():
            if count and name not in classes:
                left_out[f"emotion {name!r} not predicted by the model"] = count
        part = shared
    model_ref = req.model_ref or str(req.model)
    params = {"model": model_ref, "features": str(req.features or ""), "table": str(req.table or ""), "rows": req.rows, "split": split,
              "seed": seed, "test_size": test_size, "batch_size": req.batch_size, "feature_spec": fs.spec.to_dict(),
              "model_config_hash": meta.get("config_hash"), "shared_classes": req.shared_classes, "classes": ",".join(classes)}
    shown = model_ref if model_ref.startswith(("models:/", "runs:/")) else (req.model.parent.name or req.model.name)
    out = req.out
    with session.run(f"evaluate {shown} on {source.name}", "evaluate", params=params,
                     tags={"ser.command": "evaluate", "ser.model": model_ref, "ser.out": str(out)}):
        run_id = session.tracker.active_run_id() if session.enabled else None
        ev = score(network, part, batch_size=req.batch_size, device=device)
        extra = {"held_out": "the sources its search held out"} if meta.get("held_out_sources") and split is None and req.rows != "all" else {}
        if req.shared_classes:
            extra.update(classes=list(classes), outputs_ignored=ignored)
        if left_out:
            extra["rows_left_out"] = left_out
        data = report.metrics(ev, best_epoch=meta.get("best_epoch"), seed=seed if seed is not None else meta.get("seed"), split=split or meta.get("split"),
                              rows=req.rows, test_size=test_size, model=str(req.model), features=str(req.features or ""),
                              table=str(req.table or ""), config_hash=meta.get("config_hash"), **extra)
        report.write_metrics(out / "metrics.json", data)
        report.plot_confusion(ev.confusion, ev.labels, out / "confusion_matrix.png", title=f"{shown} on {source.name} ({req.rows})")
        report.write_table(report.per_class_rows(ev.per_class), out / "per_class", ("label", "precision", "recall", "f1", "support"))
        pred_rows = [
            {"source_id": part.source_id[i], "speaker": part.speaker[i], "corpus": part.corpus[i], "true": part.label_names[part.labels[i]],
             "predicted": ev.labels[ev.predictions[i]], **{f"p_{name}": float(ev.probabilities[i, j]) for j, name in enumerate(ev.labels)}}
            for i in range(len(part))
        ]
        (out / "predictions.csv").write_text(report.csv_text(pred_rows), encoding="utf-8")
        session.log_metrics({"accuracy": ev.accuracy, "ua": ev.ua, "macro_f1": ev.macro_f1, "loss": ev.loss, "n": len(part),
                             **{f"f1_{label}": values.get("f1") for label, values in ev.per_class.items()}})
        session.log_files(out, ("metrics.json", "confusion_matrix.png", "per_class.md", "per_class.csv", "predictions.csv"))
        session.log_dict(fs.spec.to_dict(), "feature_spec.json")
    return EvaluateResult(out, data, len(part), warnings, run_id, problems)


# --------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class TransferRequest(Settings):
    """Fine-tuning of a source-language model on a target label set over a freeze x LR x batch grid."""

    model: Path = option(cli=False, help="the source model bundle file (model.pt)")
    features: Path = option(help="target-language feature set (.npz), same image size as the model")
    out: Path = option(help="output folder")
    freeze: tuple[str, ...] = option(("all",), cli=False, help="subsets to try: letters a..g or 'all'")
    lrs: tuple[float, ...] | None = option(None, type=str, help="comma-separated learning rates (default: six log-spaced 1e-6..1e-4)")
    batches: tuple[int, ...] | None = option(None, type=str, help="comma-separated batch sizes (default 16,32,48,64)")
    epochs: int = option(150, help="epochs per grid cell (default 150, as the study's table)")
    eval_every: int = option(10, help="evaluate the test split every K epochs (and at the last; default 10)")
    cv_folds: int = option(0, metavar="K",
                           help="score each grid cell by K-fold cross-validation on the training side, as the study did (5), then "
                           "train the best cell on the whole training side and test it; 0 (default) scores each cell on the test split")
    final_epochs: int | None = option(None, help="with --cv-folds: epochs of the final model (default: --epochs; the study trained 2000, best at 615)")
    scratch: bool = option(False, help="also train the same architecture from scratch (baseline) with --scratch-lrs")
    scratch_lrs: tuple[float, ...] = option((1e-6, 1e-5, 1e-4), type=str,
                                            help="learning rates of the scratch baseline (batch 32; default 1e-6,1e-5,1e-4)")
    split: str = option("random", choices=SPLITS, help="train/test split of the target data (default random)")
    test_size: float = option(0.2, help="test fraction (default 0.2)")
    seed: int = option(0, help="seed of the split, the new head and shuffling (default 0)")
    model_ref: str = option("", cli=False, help="how the caller named the source model, for the record")
    device: str = option("auto", cli=False, help="auto, cpu or cuda")
    progress: bool = option(True, cli=False, help="progress bars")
    register: str | None = option(None, cli=False, help="registered model name (None: register nothing)")

    def __post_init__(self) -> None:  # text from a command line or a pipeline parameter becomes numbers here, once
        _as_paths(self, "model", "features", "out")
        object.__setattr__(self, "lrs", numbers(self.lrs, "lrs (--lrs)"))
        object.__setattr__(self, "batches", numbers(self.batches, "batches (--batches)", int))
        object.__setattr__(self, "scratch_lrs", numbers(self.scratch_lrs, "scratch_lrs (--scratch-lrs)") or ())
        if isinstance(self.freeze, str):
            object.__setattr__(self, "freeze", (self.freeze,))
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise StepError(f"cv_folds (--cv-folds) must be 0 or at least 2, got {self.cv_folds}")


@dataclass
class TransferResult:
    out: Path
    metrics: dict[str, Any]
    summary: list[dict[str, Any]] = field(default_factory=list)  # per frozen subset


def _transfer_by_cv(req: TransferRequest, bundle, train, test, cells, session, device) -> tuple[dict[str, Any], list]:
    """The study's transfer protocol: every cell scored by k-fold CV on the training
    side (runs.csv), then the best cell trained on the whole training side for
    ``final_epochs`` and tested on the test split (the only use of those rows)."""
    from ser.study import report, transfer

    done = []
    for i, (subset, lr, batch) in enumerate(cells, 1):
        with session.run(f"{subset} lr {lr:.3g} batch {batch} ({req.cv_folds}-fold CV)", "transfer",
                         params={"subset": subset, "lr": lr, "batch_size": batch, "epochs": req.epochs, "cv_folds": req.cv_folds, "seed": req.seed},
                         tags={"ser.role": "cell", "ser.cell": f"{i}/{len(cells)}"}):
            try:
                run = transfer.cross_validate(bundle, train, subset, lr, batch, req.epochs, folds=req.cv_folds, seed=req.seed, protocol=req.split,
                                              device=str(device), eval_every=req.eval_every, progress=req.progress)
            except ValueError as exc:
                raise StepError(f"cannot cross-validate on the training side: {exc}") from None
            session.log_metrics({"cv_accuracy": run.accuracy, "cv_macro_f1": run.macro_f1, "cv_loss": run.test_loss})
        done.append(run)
        report.write_table([r.to_dict() for r in done], req.out / "runs", (*TRANSFER_COLUMNS, "scored_on"),
                           title=f"Transfer grid ({req.cv_folds}-fold CV): {req.model} -> {req.features.name}")
    chosen = transfer.best_cell(done)
    epochs = req.final_epochs or req.epochs
    with session.run(f"final {chosen.subset} lr {chosen.lr:.3g} batch {chosen.batch_size}", "transfer",
                     params={"subset": chosen.subset, "lr": chosen.lr, "batch_size": chosen.batch_size, "epochs": epochs, "seed": req.seed},
                     tags={"ser.role": "final"}):
        scratch = chosen.subset == transfer.SCRATCH
        _, best = transfer.run_grid(bundle, train, test, () if scratch else (chosen.subset,), (chosen.lr,), (chosen.batch_size,), epochs, seed=req.seed,
                                    device=str(device), eval_every=req.eval_every, scratch_lrs=(chosen.lr,) if scratch else (),
                                    scratch_batch=chosen.batch_size, progress=req.progress)
        session.log_history(best["history"])
    return best, done


def _transfer_on_test(req: TransferRequest, bundle, train, test, cells, session, device) -> tuple[dict[str, Any] | None, list]:
    """Every cell trained on the training side and scored on the test split; the lowest test loss wins."""
    from ser.study import report, transfer

    done: list = []
    best = None
    for i, (subset, lr, batch) in enumerate(cells, 1):  # one grid cell at a time: a child run each
        scratch = subset == transfer.SCRATCH
        with session.run(f"{subset} lr {lr:.3g} batch {batch}", "transfer", params={"subset": subset, "lr": lr, "batch_size": batch,
                         "epochs": req.epochs, "eval_every": req.eval_every, "seed": req.seed}, tags={"ser.role": "cell", "ser.cell": f"{i}/{len(cells)}"}):
            cell_runs, cell_best = transfer.run_grid(bundle, train, test, () if scratch else (subset,), (lr,), (batch,), req.epochs, seed=req.seed,
                                                     device=str(device), eval_every=req.eval_every, scratch_lrs=(lr,) if scratch else (),
                                                     scratch_batch=batch, progress=req.progress)
            run = cell_runs[0]
            session.log_history(cell_best["history"])
            session.log_metrics({"final_accuracy": run.accuracy, "final_macro_f1": run.macro_f1, "final_test_loss": run.test_loss,
                                 **{k: getattr(run, k) for k in ("best_epoch", "best_accuracy", "best_macro_f1", "best_test_loss", "trainable", "seconds")}})
        done.append(run)  # results so far stay on disk if the grid is interrupted
        report.write_table([r.to_dict() for r in done], req.out / "runs", TRANSFER_COLUMNS, title=f"Transfer grid: {req.model} -> {req.features.name}")
        if best is None or run.best_test_loss < best["run"].best_test_loss:
            best = cell_best
    return best, done


def transfer(req: TransferRequest, session) -> TransferResult:
    """Transfer learning (METHOD.md section 7): the source model's last layer replaced for
    the target classes, a subset of layers frozen, fine-tuned over the grid. OUT gets
    runs.md/.csv (every cell), summary.md/.csv (per subset) and the best run's model.pt,
    metrics.json, learning_curve.png, confusion_matrix.png; tracked as a "transfer" run
    with a child per cell, the model registered as ``req.register`` with the promotion gate."""
    from ser.study import models, report, splits
    from ser.study import transfer as tl
    from ser.study.training import evaluate as score
    from ser.study.training import resolve_device

    device = resolve_device(req.device)
    bundle = load_model(req.model, device="cpu")
    fs = load_features(req.features)
    try:
        tl.check_compatible(bundle, fs)
        subsets = tl.parse_subsets(req.freeze or ["all"])
        for s in subsets:  # fail before training, not after hours of it
            tl.subset_layers(bundle.model, s)
    except ValueError as exc:
        raise StepError(str(exc)) from None
    lrs, batches = req.lrs or tl.DEFAULT_LRS, req.batches or tl.DEFAULT_BATCHES
    scratch_lrs = req.scratch_lrs if req.scratch else ()
    try:
        train_idx, test_idx = splits.train_test(fs, req.test_size, seed=req.seed, protocol=req.split)
    except ValueError as exc:
        raise StepError(f"cannot split {req.features}: {exc}") from None
    train, test = fs.subset(train_idx), fs.subset(test_idx)
    source = req.model_ref or str(req.model)
    out = req.out
    out.mkdir(parents=True, exist_ok=True)
    cells = tl.grid(subsets, lrs, batches, scratch_lrs)
    params = {"source_model": source, "features": str(req.features), "freeze": ",".join(subsets), "lrs": list(lrs), "batches": list(batches),
              "scratch_lrs": list(scratch_lrs), "epochs": req.epochs, "eval_every": req.eval_every, "split": req.split, "cv_folds": req.cv_folds,
              "test_size": req.test_size, "seed": req.seed, "cells": len(cells), "feature_spec": fs.spec.to_dict(), "labels": list(fs.label_names)}
    with session.run(f"transfer {req.model.parent.name or req.model.name} -> {req.features.name}", "transfer", params=params,
                     tags={"ser.command": "transfer", "ser.role": "grid", "ser.source_model": source, "ser.out": str(out)}):
        how = _transfer_by_cv if req.cv_folds else _transfer_on_test
        best, done = how(req, bundle, train, test, cells, session, device)
        rows = tl.summary(done)
        report.write_table(rows, out / "summary", title=("Mean last-epoch cross-validated accuracy" if req.cv_folds else "Mean last-epoch test accuracy") + " / macro F1 (%) over the LR x batch grid, per frozen subset",
                           digits={"mean_accuracy": 2, "std_accuracy": 2, "mean_macro_f1": 2, "best_accuracy": 2})
        if best is None:
            raise StepError("empty grid: nothing was trained")
        run = best["run"]
        model = models.build(best["arch"])
        model.load_state_dict(best["state"])
        ev = score(model, test, device=device)
        meta = {"seed": req.seed, "split": req.split, "test_size": req.test_size, "source_model": str(req.model), "transfer": run.to_dict(),
                "best_epoch": run.best_epoch, "metrics": {"accuracy": ev.accuracy, "macro_f1": ev.macro_f1, "loss": ev.loss},
                "config_hash": config_hash(best["arch"].to_dict(), run.to_dict(), req.split, req.test_size, fs.spec.key())}
        models.save_bundle(out / "model.pt", model, fs.label_names, fs.spec.to_dict(), meta)
        data = report.metrics(ev, best_epoch=run.best_epoch, seed=req.seed, split=req.split, transfer=run.to_dict(),
                              source_model=str(req.model), summary=rows, config_hash=meta["config_hash"])
        report.write_metrics(out / "metrics.json", data)
        title = f"transfer ({run.subset}) lr {run.lr:.3g} batch {run.batch_size}"
        report.plot_learning_curve(best["history"], out / "learning_curve.png", title=title, best_epoch=run.best_epoch, eval_name="test")
        report.plot_confusion(ev.confusion, ev.labels, out / "confusion_matrix.png", title=f"{title}: test set")
        session.set_tags({"ser.best_cell": f"{run.subset} lr {run.lr:.3g} batch {run.batch_size}"})
        session.log_final(out, history=best["history"], test=test, metrics=data, feature_spec=fs.spec.to_dict(), register=req.register,
                          test_set={"features": str(req.features), "split": req.split, "seed": req.seed, "test_size": req.test_size},
                          config_hash=meta["config_hash"])
    return TransferResult(out, data, rows)


# --------------------------------------------------------------------------- cross-validate


@dataclass(frozen=True)
class CrossValidateRequest(Settings):
    """Speaker-independent cross-validation of a recipe (:mod:`ser.study.crossval`): every
    speaker tested once by models that never heard them; UA, WA and macro F1 over folds."""

    out: Path = option(help="output folder")
    table: Path | None = option(None, help="utterance table (from `ser ingest`): features are extracted with the recipe's spec (cached)")
    features: Path | None = option(None, help="feature set (.npz) made with the recipe's feature spec (instead of --table)")
    recipe: str = option("plus", help="plus, study, whisper, or a recipe file (YAML/JSON) (default plus)")
    labels: str = option("english", choices=LABEL_SET_NAMES,
                         help="label set for --table (which classes the run keeps; default english)")
    folds: int | None = option(None, help="K speaker groups instead of leave-one-speaker-out")
    seeds: int = option(1, help="repeat with seeds 0..K-1 (mean/std over folds and seeds; default 1)")
    epochs: int | None = option(None, help="override the recipe's epoch budget")
    overrides: tuple[str, ...] = option((), flag="--set", action="append", metavar="SECTION.FIELD=VALUE",
                                        help="override one recipe field, e.g. augment.mixup=0 or model.pooling=attention "
                                        "(repeatable; the ablation switches)")
    ablation: bool = option(False, help="also rerun the recipe with each of its switches off alone, on the same folds and seeds "
                            "(OUT/ablation.md: UA/WA/F1 mean +- std and the UA change per switch)")
    trained: Path | None = option(None, metavar="DIR", help="a finished `ser cv` OUT on the same folds: where this recipe differs "
                                  "from that run's only in how the network infers (e.g. --set 'model.speeds=[1]'), its fold "
                                  "weights are rescored, not trained again")
    cache: Path = option(Path(".ser/cache/features"), help="feature cache folder (with --table)")
    device: str = option("cpu", choices=("cpu", "cuda", "auto"), help="where to train (default cpu; auto: a GPU when torch sees one)")
    threads: int | None = option(None, help="torch CPU threads (default: torch's choice)")
    roots: tuple[Path, ...] = option((), cli=False)  # folders the table's relative paths resolve against (pipeline artifacts)
    progress: bool = option(True, cli=False)

    def __post_init__(self) -> None:
        _as_paths(self, "out", "table", "features", "cache", "trained")
        object.__setattr__(self, "overrides", tuple(self.overrides or ()))
        object.__setattr__(self, "roots", tuple(Path(r) for r in self.roots))
        if (self.table is None) == (self.features is None):
            raise StepError("cross-validation takes exactly one of a table (features extracted) or a feature set")
        if self.seeds < 1:
            raise StepError("seeds must be at least 1")
        if self.folds is not None and self.folds < 2:
            raise StepError("folds must be at least 2 (or none: leave-one-speaker-out)")

    def load_recipe(self):
        """The recipe with --set and --epochs applied."""
        import yaml

        from ser.study import crossval

        try:
            recipe = crossval.load_recipe(self.recipe)
            changes = {}
            for pair in self.overrides:
                name, sep, text = pair.partition("=")
                if not sep:
                    raise StepError(f"an override takes SECTION.FIELD=VALUE, got {pair!r}")
                changes[name] = yaml.safe_load(text)
            recipe = crossval.override(recipe, changes)
        except crossval.CVError as exc:
            raise StepError(str(exc)) from None
        return recipe.with_(train=recipe.train.with_(epochs=self.epochs)) if self.epochs else recipe


@dataclass
class CrossValidateResult:
    cv: Any  # ser.study.crossval.CVResult
    rows: int
    speakers: int
    problems: list  # (path, reason) of table rows left out
    ablation: list | None  # rows of ablation.md, when asked


def cross_validate(req: CrossValidateRequest, session, log=print) -> CrossValidateResult:
    """Cross-validate the request's recipe over speaker folds; resumable (finished folds are
    read back). Its MLflow run holds the recipe, UA/WA/macro F1 mean and std, the fold
    table and the summed confusion matrix; the fold models are saved as one servable
    ensemble (OUT/ensemble.pt)."""
    import torch

    from ser.study import crossval

    if req.threads:
        torch.set_num_threads(req.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if req.device == "auto" else req.device
    if device == "cuda" and not torch.cuda.is_available():
        raise StepError("device cuda, but torch sees no CUDA GPU")
    recipe = req.load_recipe()
    made: dict = {}
    problems: list = []

    def features_for(variant):
        """The feature set a recipe (or an ablation variant) needs: extracted from the
        table with its spec (cached), or the given set checked against it."""
        key = variant.features.key()
        if key in made:
            return made[key]
        if req.table is not None:
            fs, report = table_features(req.table, variant.features, req.labels, req.cache, roots=req.roots, progress=req.progress)
            problems.extend(report.problems)
        else:
            fs = load_features(req.features)
            if not fs.spec.matches(variant.features):
                raise StepError(f"{req.features} was extracted with {fs.spec.to_dict()}, the recipe needs {variant.features.to_dict()}: "
                                "give the table to extract it")
        made[key] = fs
        return fs

    fs = features_for(recipe)
    speakers = len(set(fs.speaker.tolist()))
    seeds = tuple(range(req.seeds))
    params = {"recipe": recipe.name, "protocol": f"{req.folds} speaker groups" if req.folds else "leave-one-speaker-out",
              "seeds": req.seeds, "labels": ",".join(fs.label_names), "rows": len(fs), "speakers": speakers,
              "checkpoint": recipe.checkpoint, "epochs": recipe.train.epochs, "overrides": ";".join(req.overrides)}
    if req.trained is not None:
        params["trained"] = str(req.trained)  # where rescored folds' weights came from
    with session.run(f"cv {recipe.name} on {(req.table or req.features).name}", "cv", params=params,
                     tags={"ser.optimistic": str(recipe.optimistic).lower()}):
        try:
            result = crossval.run(fs, recipe, req.out, folds=req.folds, seeds=seeds, device=device, progress=req.progress,
                                  trained=req.trained, log=log)
        except crossval.CVError as exc:
            raise StepError(str(exc)) from None
        for prefix, summary in (("", result.summary), ("seed_ensemble_", (result.seed_ensemble or {}).get("summary"))):
            if summary:
                session.log_metrics({f"{prefix}{name}_{stat}": summary[name][stat] for name in summary for stat in ("mean", "std")})
        session.log_files(req.out, ("recipe.yaml", "folds.md", "folds.csv", "summary.json", "confusion_matrix.png"))
        ablation = None
        if req.ablation:
            try:
                ablation = crossval.ablation(features_for, recipe, req.out / "ablation", folds=req.folds, seeds=seeds, device=device,
                                             progress=req.progress, base=result)
            except crossval.CVError as exc:
                raise StepError(str(exc)) from None
            session.log_files(req.out / "ablation", ("ablation.md", "ablation.csv"), artifact_path="ablation")
    return CrossValidateResult(result, len(fs), speakers, problems, ablation)


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class PublishRequest(Settings):
    """An archived model version in the model bucket, and the serving copy when promoted."""

    model_dir: Path = option(cli=False, help="folder holding model.pt (and its metrics.json)")
    bucket: str = option(cli=False, help="model bucket")
    name: str = option(cli=False, help="model name: the prefix in the bucket, the registered model in MLflow")
    out: Path = option(cli=False, help="local staging folder (versions/<version>/, published.json)")
    metrics_dir: Path | None = option(None, cli=False, help="folder whose metrics.json goes with the version (an evaluation); default model_dir's")
    promote: bool = option(False, cli=False, help="the promotion gate made it champion: make name/champion/ follow the registry")
    version: str = option("", cli=False, help="version label (default: UTC time and the model's hash)")
    registry_version: str = option("", cli=False, help="its version in the MLflow registry, recorded with it")

    def __post_init__(self) -> None:
        _as_paths(self, "model_dir", "out", "metrics_dir")


@dataclass
class PublishResult:
    info: dict[str, Any]  # name, version, uri, files, promoted, metrics (+ champion_uri/champion_version when promoted)


def publish(req: PublishRequest, store) -> PublishResult:
    """Archive a model: TorchServe .mar + KServe layout under
    ``s3://bucket/name/versions/<version>/`` (with model.pt and metrics.json), through
    ``store`` (:class:`ser.adapters.store.S3Store`). Promoted (by
    :func:`ser.adapters.champion.gate`): the S3 serving copy ``name/champion/`` (the
    InferenceService's storageUri) and its pointer ``name/registry/champion.json`` are
    made to follow the registry's ``champion`` alias
    (:func:`ser.adapters.champion.sync_serving_copy`: whoever the registry names, which
    is this model unless a later promotion already overtook it). Not promoted: the
    serving copy is left as it is. Writes ``out/published.json``."""
    import time

    from ser.adapters import champion
    from ser.files import read_json, write_json
    from ser.serve import package
    from ser.study import report

    model_pt = req.model_dir / "model.pt"
    if not model_pt.is_file():
        raise StepError(f"{req.model_dir} holds no model.pt to publish")
    metrics = read_json((req.metrics_dir or req.model_dir) / "metrics.json")
    digest = hashlib.sha256(model_pt.read_bytes()).hexdigest()[:8]
    version = req.version or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{digest}"
    stage = req.out / "versions" / version
    stage.mkdir(parents=True, exist_ok=True)
    mar = package.build_mar(req.model_dir, stage / f"{req.name}.mar", name=req.name, version="1.0")
    package.kserve_layout(mar, stage)
    shutil.copyfile(model_pt, stage / "model.pt")
    write_json(stage / "metrics.json", {**metrics, **({"registry_version": req.registry_version} if req.registry_version else {})})
    prefix = f"{req.name}/versions/{version}"
    keys = store.upload_dir(stage, req.bucket, prefix, progress=False)
    info: dict[str, Any] = {"name": req.name, "version": version, "uri": f"s3://{req.bucket}/{prefix}", "files": len(keys),
                            "promoted": req.promote, "metrics": report.scalars(metrics)}
    if req.registry_version:
        info["registry_version"] = req.registry_version
    if req.promote:
        pointer = champion.sync_serving_copy(req.name, store, req.bucket)
        if pointer is None:
            raise champion.ChampionError(f"{req.name} was promoted but the MLflow registry names no champion: "
                                         "is MLFLOW_TRACKING_URI the server the gate used?")
        write_json(req.out / "champion.json", pointer)
        info["champion_uri"] = pointer["storage_uri"]
        info["champion_version"] = pointer["version"]
    write_json(req.out / "published.json", info)
    return PublishResult(info)
