"""Speaker-independent cross-validation: how a model does on voices it never heard.

Every speaker is tested once by models that never heard them: leave-one-speaker-out
(``folds=None``) or k speaker groups. Inside each fold, the checkpoint and the early
stop are chosen on validation speakers carved from the fold's training speakers
(:func:`ser.study.splits.validation_split`); test rows are only ever scored. The ``study``
recipe keeps the study's own rule instead (``checkpoint: test``: the epoch with the
lowest *test* loss), and everything it writes says that its scores are optimistic.

A recipe (:class:`CVRecipe`, ``src/ser/recipes/cv/*.yaml``) fixes the features, the
network, the augmentation, the training budget and the checkpoint rule; it is saved
beside the results. Each (fold, seed) writes its result as soon as it ends, so an
interrupted run resumes without redoing finished folds. Results: UA, WA and macro F1
per fold and seed, and their mean and standard deviation (:mod:`ser.study.metrics`), a
summed confusion matrix, with several seeds each fold's seeds scored as one model
(:func:`seed_ensemble`), and the fold models of the first seed as one ensemble bundle
(``ensemble.pt``) that serves as a single model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from ser import files
from ser.study import metrics, splits
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec, stacked_layers
from ser.study.plus import PlusConfig
from ser.study.training import TrainConfig

CHECKPOINT_RULES: tuple[str, ...] = ("validation", "last", "test")
OPTIMISTIC_NOTE = ("checkpoint chosen on the TEST rows (the study's rule): these scores are optimistic, "
                   "not what a new voice gets")


CHECKPOINT_NOTES = {
    "validation": "checkpoint and early stop on validation speakers from the training side; test rows only scored",
    "last": "the last epoch is kept (a fixed rule, nothing chosen on any scored rows); every training speaker trains",
    "test": OPTIMISTIC_NOTE,
}


class CVError(ValueError):
    """A recipe or a cross-validation that cannot run, with the reason."""


@dataclass(frozen=True)
class CVRecipe:
    """Features, network, augmentation, budget and checkpoint rule of a cross-validation."""

    name: str
    features: FeatureSpec
    model: dict[str, Any]
    train: TrainConfig
    augment: PlusConfig | None = None
    checkpoint: str = "validation"
    val_size: float = 0.2
    patience: int = 10
    select: str = "loss"
    description: str = ""

    def __post_init__(self) -> None:
        if self.checkpoint not in CHECKPOINT_RULES:
            raise CVError(f"checkpoint must be one of {CHECKPOINT_RULES}, got {self.checkpoint!r}")
        if not 0.0 < self.val_size < 1.0:
            raise CVError(f"val_size must be a fraction in (0, 1), got {self.val_size}")
        if self.patience < 0:
            raise CVError("patience must be >= 0 (0: no early stop)")
        if self.select not in ("loss", "ua"):
            raise CVError(f"select must be loss or ua, got {self.select!r}")
        takes = {"plus": "logmel", "head": "whisper"}.get(str(self.model.get("cnn")))
        if takes != (self.features.kind if self.features.kind in ("logmel", "whisper") else None):
            raise CVError("the plus network takes logmel features, the head takes whisper embeddings, "
                          "the study's CNNs take mel/chroma/mfcc images")

    @property
    def optimistic(self) -> bool:
        return self.checkpoint == "test"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "features": self.features.to_dict(), "model": dict(self.model),
                "augment": self.augment.to_dict() if self.augment else None, "train": self.train.to_dict(),
                "checkpoint": self.checkpoint, "val_size": self.val_size, "patience": self.patience, "select": self.select}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CVRecipe":
        known = {"name", "description", "features", "model", "augment", "train", "checkpoint", "val_size", "patience", "select"}
        unknown = set(data) - known
        if unknown:
            raise CVError(f"unknown recipe keys {sorted(unknown)}; expected {sorted(known)}")
        try:
            return cls(
                name=str(data.get("name", "custom")), description=str(data.get("description", "")).strip(),
                features=FeatureSpec.from_dict(dict(data["features"])), model=dict(data.get("model") or {}),
                train=TrainConfig.from_dict(dict(data.get("train") or {})),
                augment=PlusConfig.from_dict(dict(data["augment"])) if data.get("augment") else None,
                checkpoint=str(data.get("checkpoint", "validation")), val_size=float(data.get("val_size", 0.2)),
                patience=int(data.get("patience", 10)), select=str(data.get("select", "loss")),
            )
        except KeyError as exc:
            raise CVError(f"recipe lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CVError(f"invalid recipe: {exc}") from None

    def with_(self, **changes: Any) -> "CVRecipe":
        return replace(self, **changes)

    def key(self, training_only: bool = False) -> str:
        """Stable hash of what decides a fold's result (not its name, not the device);
        ``training_only``: of what decides its trained weights (the settings in
        :data:`INFERENCE_ONLY` left out where the last epoch is kept: under any other
        rule, the chosen epoch depends on how the network infers), so a fold can be
        rescored, not retrained."""
        data = self.to_dict()
        data["train"] = {k: v for k, v in data["train"].items() if k != "device"}
        data.pop("description", None)
        data.pop("name", None)
        dropped = [name for name, off in ADDED_OFF.items() if _field(data, name, off) == off]  # added later, left off
        if training_only and self.checkpoint == "last":
            dropped += INFERENCE_ONLY
        for name in dropped:
            section, _, fld = name.partition(".")
            (data.get(section) or {}).pop(fld, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


#: Recipe settings that change how a trained network infers, never what it learns: a fold
#: trained without them is rescored with them (``run(trained=...)``), as the ablation does.
INFERENCE_ONLY: tuple[str, ...] = ("model.speeds",)

#: Switches added to a recipe section after runs were made, with the value that turns them
#: off: left off, they stay out of :meth:`CVRecipe.key`, so finished folds are not redone.
ADDED_OFF: dict[str, Any] = {"augment.vtlp": 0.0}


def _field(data: dict[str, Any], name: str, default: Any = None) -> Any:
    """``section.field`` of a recipe's dict."""
    section, _, fld = name.partition(".")
    return (data.get(section) or {}).get(fld, default)


RECIPES: tuple[str, ...] = ("plus", "study", "whisper")


def load_recipe(name_or_path: str | Path) -> CVRecipe:
    """A recipe by name (plus, study: shipped in the package) or a YAML/JSON file."""
    text_name = str(name_or_path)
    if text_name in RECIPES:
        text = resources.files("ser").joinpath(f"recipes/cv/{text_name}.yaml").read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise CVError(f"recipe {name_or_path} is neither one of {RECIPES} nor a file")
        text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise CVError(f"recipe {name_or_path} must hold a mapping")
    return CVRecipe.from_dict(data)


def model_spec(recipe: CVRecipe, in_size: int, n_classes: int, layers: int = 1):
    """The recipe's architecture sized for the data (``layers``: encoder layers stacked
    in each feature frame, for the whisper head)."""
    from ser.study import models

    data = dict(recipe.model)
    if data.get("cnn") == "head":
        return models.spec_from_dict({**data, "in_size": in_size, "n_classes": n_classes, "layers": layers})
    if data.get("cnn") == "plus":
        return models.spec_from_dict({**data, "in_size": in_size, "n_classes": n_classes})
    preset = data.pop("preset", None)
    base = models.PRESETS[preset].to_dict() if preset else {}
    base.update(data)
    base.update(in_size=in_size, n_classes=n_classes)
    return models.ArchSpec.from_dict(base)


@dataclass(frozen=True)
class _Patience:
    """Early stop: no lower validation loss in ``patience`` evaluations."""

    rule: str = "patience"
    scope: str = "fold"


def patience_stopper(patience: int) -> Callable[[list], _Patience | None] | None:
    if patience <= 0:
        return None

    def stop(history: list) -> _Patience | None:
        evaluated = [r for r in history if r.evaluated]
        if len(evaluated) <= patience:
            return None
        best = min(range(len(evaluated)), key=lambda i: evaluated[i].val_loss)
        return _Patience() if len(evaluated) - 1 - best >= patience else None

    return stop


@dataclass
class FoldResult:
    fold: int
    seed: int
    test_speakers: list[str]
    n_train: int
    n_val: int
    n_test: int
    ua: float
    wa: float
    macro_f1: float
    best_epoch: int
    epochs_run: int
    seconds: float
    y_true: list[int] = field(default_factory=list)
    y_pred: list[int] = field(default_factory=list)
    y_prob: list[list[float]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  #: every epoch: train loss, and the checked rows' scores
    rescored_from: str = ""  #: the fold whose weights were rescored here (``seconds``: the rescoring's), if any

    def row(self) -> dict[str, Any]:
        return {"fold": self.fold, "seed": self.seed, "test_speakers": " ".join(self.test_speakers), "n_test": self.n_test,
                "ua": 100 * self.ua, "wa": 100 * self.wa, "macro_f1": 100 * self.macro_f1, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "seconds": self.seconds}


@dataclass
class CVResult:
    recipe: CVRecipe
    protocol: str
    folds: list[FoldResult]
    summary: dict[str, dict[str, float]]
    confusion: list[list[int]]
    labels: tuple[str, ...]
    out: Path
    seed_ensemble: dict[str, Any] | None = None
    last_epoch: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.name, "protocol": self.protocol, "summary": self.summary, "labels": list(self.labels),
                "confusion_matrix": self.confusion, "checkpoint": self.recipe.checkpoint,
                "note": CHECKPOINT_NOTES[self.recipe.checkpoint], "seed_ensemble": self.seed_ensemble, "last_epoch": self.last_epoch,
                "folds": [{k: v for k, v in vars(f).items() if k not in ("y_true", "y_pred", "y_prob", "history")} for f in self.folds]}


@dataclass
class FoldRun:
    """One trained fold: the model with its chosen weights, how it was fitted, and its test scores."""

    model: Any
    fit: Any
    scores: metrics.Scores
    predictions: np.ndarray
    y_true: np.ndarray
    n_val: int
    probabilities: np.ndarray


def train_fold(fs: FeatureSet, train_idx: np.ndarray, test_idx: np.ndarray, recipe: CVRecipe, seed: int, *,
               device: str = "cpu", progress: bool = False, desc: str = "fold") -> FoldRun:
    """Train one model on ``train_idx`` (checkpoint chosen by the recipe's rule) and score it on ``test_idx``."""
    import torch

    from ser.study import models
    from ser.study.plus import augmenter
    from ser.study.training import fit, seed_everything

    if recipe.optimistic:
        fit_idx, val_idx = train_idx, test_idx  # the study's rule, labelled optimistic everywhere
    elif recipe.checkpoint == "last":
        fit_idx, val_idx = train_idx, np.zeros(0, dtype=np.int64)  # a fixed rule: every training speaker trains
    else:
        fit_idx, val_idx = splits.validation_split(fs, train_idx, recipe.val_size, seed=seed)
    spec = model_spec(recipe, int(fs.images.shape[1]), len(fs.label_names), stacked_layers(fs.spec))
    seed_everything(seed)
    model = models.build(spec)
    cfg = recipe.train.with_(seed=seed, device=device)
    augment = augmenter(recipe.augment, spec.window, spec.n_classes) if recipe.augment is not None else None
    if augment is None and getattr(spec, "cnn", "") == "plus":
        augment = augmenter(PlusConfig(crop=False, speed=0.0, specaugment=False, mixup=0.0, label_smoothing=0.0), spec.window, spec.n_classes)
    val = fs.subset(val_idx) if val_idx.size else None
    result = fit(model, fs.subset(fit_idx), val, cfg, stopper=patience_stopper(recipe.patience) if val is not None else None,
                 progress=progress, desc=desc, augment=augment, select=recipe.select)
    model.load_state_dict(result.best_state)
    model.eval()
    from ser.study.training import evaluate

    ev = evaluate(model, fs.subset(test_idx), device=torch.device(device) if device != "auto" else None)
    return FoldRun(model, result, metrics.Scores(ev.ua, ev.accuracy, ev.macro_f1), ev.predictions, fs.labels[test_idx], len(val_idx),
                   ev.probabilities)


def fold_probabilities(fs: FeatureSet, test_idx: np.ndarray, model_path: Path, device: str = "cpu") -> np.ndarray:
    """Class probabilities of a saved fold model on its test rows: for a fold finished
    before results kept them, so a resumed run can still average its seeds."""
    from ser.study import models
    from ser.study.training import evaluate

    return evaluate(models.load_bundle(model_path, device).model, fs.subset(test_idx)).probabilities


def seed_ensemble(results: list[FoldResult], n_classes: int) -> dict[str, Any] | None:
    """Each fold's seeds as one ensemble (mean probabilities), scored on the fold's
    test speakers: what serving K models trained with K seeds gets on a voice none of
    them heard. None with one seed. Returns the per-fold scores and their summary."""
    by_fold: dict[int, list[FoldResult]] = {}
    for r in results:
        by_fold.setdefault(r.fold, []).append(r)
    if max(len(group) for group in by_fold.values()) < 2:
        return None
    folds = []
    for fold, group in sorted(by_fold.items()):
        probs = np.mean([np.asarray(r.y_prob, dtype=np.float64).reshape(-1, n_classes) for r in group], axis=0)
        sc = metrics.scores(np.asarray(group[0].y_true), probs.argmax(1))
        folds.append({"fold": fold, "seeds": len(group), **sc.to_dict()})
    summary = metrics.summarise(folds)
    return {"summary": summary, "folds": folds,
            "note": f"each fold's {len(results) // len(by_fold)} seeds averaged into one model, scored on its test speakers"}


def last_epoch_scores(results: list[FoldResult]) -> dict[str, Any] | None:
    """Under the study's rule the test rows are scored every epoch, so the same runs
    also say what their last epoch (a rule that looks at no rows) gets: an honest
    figure beside the optimistic one, at no extra cost. None where a run lacks it."""
    last = [r.history[-1] for r in results if r.history]
    if len(last) != len(results) or not last or any(math.isnan(h.get("ua", math.nan)) for h in last):
        return None
    summary = metrics.summarise([metrics.Scores(h["ua"], h["accuracy"], h["macro_f1"]) for h in last])
    return {"summary": summary, "note": "the same runs at their last epoch (a fixed rule: no rows looked at to choose it)"}


def run(fs: FeatureSet, recipe: CVRecipe, out: str | Path, *, folds: int | None = None, seeds: tuple[int, ...] = (0,),
        device: str = "cpu", progress: bool = True, trained: str | Path | None = None,
        log: Callable[[str], None] = print) -> CVResult:
    """Cross-validate ``recipe`` on ``fs`` over speaker folds (``folds=None``: one per
    speaker), for each seed; write everything under ``out`` and return the result.
    ``trained``: another run's folder on the same folds; where its fold was trained by a
    recipe differing from this one in :data:`INFERENCE_ONLY` settings alone, that
    fold's weights are rescored here instead of trained again."""
    from ser.study import models

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not fs.spec.matches(recipe.features):
        raise CVError(f"the feature set was made with {fs.spec.to_dict()}, the {recipe.name} recipe wants "
                      f"{recipe.features.to_dict()}: extract it with the recipe's features")
    try:
        outer = splits.speaker_folds(fs, folds, seed=seeds[0])
    except ValueError as exc:
        raise CVError(str(exc)) from None
    protocol = "leave-one-speaker-out" if folds is None else f"{folds}-fold speaker groups"
    if trained is not None and not Path(trained).is_dir():
        raise CVError(f"{trained}: not a folder of a `ser cv` run (--trained)")
    files.write_text(out / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    keys = splits.speaker_keys(fs)
    key = f"{recipe.key()}-{fs.spec.key()}"  # the features too: a new encoder version retrains every fold
    training_key = recipe.key(training_only=True)
    results: list[FoldResult] = []
    ensemble_members: list[tuple[Any, Any]] = []
    for seed in seeds:
        for i, (train_idx, test_idx) in enumerate(outer):
            folder = out / f"fold-{i:02d}-seed-{seed}"
            done = folder / "result.json"
            speakers = sorted(set(keys[test_idx].tolist()))
            data = files.read_json(done) if done.is_file() else {}
            if data.get("recipe_key") == key and (folder / "model.pt").is_file():
                keys_of = {name: data.pop(name) for name in ("recipe_key", "training_key") if name in data}
                res = FoldResult(**data)
                older = "training_key" not in keys_of  # a fold run before training keys were recorded
                if len(seeds) > 1 and not res.y_prob:
                    res.y_prob, older = _rounded(fold_probabilities(fs, test_idx, folder / "model.pt", device)), True
                if older:
                    files.write_json(done, {**vars(res), **keys_of, "training_key": training_key})
                log(f"fold {i} seed {seed} ({' '.join(speakers)}): done before, UA {100 * res.ua:.1f}%")
            elif trained is not None and (source := _trained_fold(Path(trained) / folder.name, training_key, fs, speakers,
                                                                  (int(train_idx.size), int(test_idx.size)), log)):
                res = rescore_fold(fs, test_idx, recipe, *source, folder, device)
                files.write_json(done, {**vars(res), "recipe_key": key, "training_key": training_key})
                log(f"fold {i} seed {seed} ({' '.join(speakers)}): UA {100 * res.ua:.1f}%, WA {100 * res.wa:.1f}%, "
                    f"macro F1 {100 * res.macro_f1:.1f}% (the weights of {res.rescored_from}, rescored in {res.seconds:.0f} s)")
            else:
                t0 = time.perf_counter()
                done_fold = train_fold(fs, train_idx, test_idx, recipe, seed, device=device, progress=progress,
                                       desc=f"fold {i + 1}/{len(outer)} seed {seed}")
                sc, fitted = done_fold.scores, done_fold.fit
                res = FoldResult(fold=i, seed=seed, test_speakers=speakers, n_train=int(train_idx.size), n_val=done_fold.n_val, n_test=int(test_idx.size),
                                 ua=sc.ua, wa=sc.wa, macro_f1=sc.macro_f1, best_epoch=fitted.best_epoch, epochs_run=fitted.epochs_run,
                                 seconds=round(time.perf_counter() - t0, 2), y_true=[int(v) for v in done_fold.y_true],
                                 y_pred=[int(v) for v in done_fold.predictions], y_prob=_rounded(done_fold.probabilities),
                                 history=[r.to_dict() for r in fitted.history])
                models.save_bundle(folder / "model.pt", done_fold.model, fs.label_names, fs.spec.to_dict(),
                                   {"recipe": recipe.name, "fold": i, "seed": seed, "test_speakers": speakers, "checkpoint": recipe.checkpoint})
                files.write_json(done, {**vars(res), "recipe_key": key, "training_key": training_key})
                log(f"fold {i} seed {seed} ({' '.join(speakers)}): UA {100 * sc.ua:.1f}%, WA {100 * sc.wa:.1f}%, "
                    f"macro F1 {100 * sc.macro_f1:.1f}% (epoch {fitted.best_epoch} of {fitted.epochs_run}, {res.seconds:.0f} s)")
            results.append(res)
            if seed == seeds[0]:
                ensemble_members.append(folder / "model.pt")
    summary = metrics.summarise([metrics.Scores(r.ua, r.wa, r.macro_f1) for r in results])
    y_true = np.concatenate([np.array(r.y_true, dtype=np.int64) for r in results])
    y_pred = np.concatenate([np.array(r.y_pred, dtype=np.int64) for r in results])
    cm = metrics.confusion(y_true, y_pred, len(fs.label_names)).tolist()
    result = CVResult(recipe, protocol, results, summary, cm, fs.label_names, out,
                      seed_ensemble(results, len(fs.label_names)),
                      last_epoch_scores(results) if recipe.optimistic else None)
    if result.seed_ensemble:
        log(f"{len(seeds)} seeds of each fold as one ensemble: {metrics.format_summary(result.seed_ensemble['summary'])}")
    if result.last_epoch:
        log(f"the same runs at their last epoch (no rows looked at): {metrics.format_summary(result.last_epoch['summary'])}")
    _write_outputs(result, fs, ensemble_members)
    return result


def _trained_fold(folder: Path, training_key: str, fs: FeatureSet, speakers: list[str], rows: tuple[int, int],
                  log: Callable[[str], None]) -> tuple[Path, dict[str, Any], Any] | None:
    """``folder`` (another run's fold of the same name), its result and its loaded model,
    when its weights are what this recipe (``training_key``) would train on the same
    features and labels, and its test speakers and row counts (training, test) are this
    fold's: the same fold, not one that shares its folder name. Otherwise None, and the
    reason is logged: the fold is then trained."""
    from ser.study import models

    done = folder / "result.json"
    bundle = None
    if not (done.is_file() and (folder / "model.pt").is_file()):
        reason, data = "no finished fold there", {}
    else:
        data = files.read_json(done)
        reason = ""
        if _training_key(folder, data) != training_key:
            reason = "its recipe trains differently (only inference settings may differ: " + ", ".join(INFERENCE_ONLY) + ")"
        elif not str(data.get("recipe_key", "")).endswith(f"-{fs.spec.key()}"):
            reason = "other features"
        elif list(data.get("test_speakers", [])) != list(speakers) or (data.get("n_train"), data.get("n_test")) != rows:
            reason = "other test speakers or rows"
        elif tuple((bundle := models.load_bundle(folder / "model.pt")).labels) != tuple(fs.label_names):
            reason = "other labels"
    if reason:
        log(f"{folder}: not rescored, {reason}; trained here")
        return None
    return folder, data, bundle


def _training_key(folder: Path, data: dict[str, Any]) -> str | None:
    """A finished fold's training key: recorded, or (a run from before keys were) worked
    out from the recipe saved beside it when that is the recipe the fold ran."""
    if "training_key" in data:
        return data["training_key"]
    try:
        saved = CVRecipe.from_dict(yaml.safe_load((folder.parent / "recipe.yaml").read_text()))
    except (OSError, CVError, yaml.YAMLError, AttributeError, TypeError):
        return None
    return saved.key(training_only=True) if str(data.get("recipe_key", "")).startswith(f"{saved.key()}-") else None


def rescore_fold(fs: FeatureSet, test_idx: np.ndarray, recipe: CVRecipe, source: Path, data: dict[str, Any], bundle: Any,
                 folder: Path, device: str = "cpu") -> FoldResult:
    """A fold trained before (``source``: its ``result.json`` read as ``data``, its model
    loaded as ``bundle``), its weights put in the network ``recipe`` infers with and
    scored again on ``test_idx``; saved under ``folder`` like a trained fold (its
    ``seconds``: the rescoring's; ``rescored_from``: ``source``)."""
    import torch

    from ser.study import models
    from ser.study.training import evaluate

    t0 = time.perf_counter()
    model = models.build(model_spec(recipe, int(fs.images.shape[1]), len(fs.label_names), stacked_layers(fs.spec)))
    model.load_state_dict(bundle.model.state_dict())
    model.eval()
    ev = evaluate(model, fs.subset(test_idx), device=None if device == "auto" else torch.device(device))
    kept = {k: v for k, v in data.items() if k not in ("recipe_key", "training_key")}
    res = FoldResult(**{**kept, "ua": ev.ua, "wa": ev.accuracy, "macro_f1": ev.macro_f1, "seconds": round(time.perf_counter() - t0, 2),
                        "y_pred": [int(v) for v in ev.predictions], "y_prob": _rounded(ev.probabilities), "rescored_from": str(source)})
    models.save_bundle(folder / "model.pt", model, fs.label_names, fs.spec.to_dict(),
                       {**bundle.meta, "recipe": recipe.name, "rescored_from": str(source)})
    return res


def _rounded(probabilities: np.ndarray) -> list[list[float]]:
    return [[round(float(p), 6) for p in row] for row in probabilities]


def _write_outputs(result: CVResult, fs: FeatureSet, members: list[Path]) -> None:
    from ser.study import models, report

    out, recipe = result.out, result.recipe
    title = f"{recipe.name} recipe, {result.protocol}: {metrics.format_summary(result.summary)}"
    if recipe.optimistic:
        title += f" -- {OPTIMISTIC_NOTE}"
    if result.last_epoch:
        title += f"; the same runs at their last epoch (no rows looked at): {metrics.format_summary(result.last_epoch['summary'])}"
    if result.seed_ensemble:
        title += f"; each fold's seeds as one ensemble: {metrics.format_summary(result.seed_ensemble['summary'])}"
    rows = [r.row() for r in result.folds]
    report.write_table(rows, out / "folds", ("fold", "seed", "test_speakers", "n_test", "ua", "wa", "macro_f1", "best_epoch", "epochs_run", "seconds"),
                       title=title, digits={"ua": 1, "wa": 1, "macro_f1": 1, "seconds": 0})
    files.write_json(out / "summary.json", result.to_dict())
    report.plot_confusion(result.confusion, result.labels, out / "confusion_matrix.png", title=f"{recipe.name}, {result.protocol} (all test rows)")
    bundles = [models.load_bundle(p) for p in members]
    spec = models.EnsembleSpec(members=tuple(b.arch for b in bundles))
    ensemble = models.Ensemble(spec, [b.model for b in bundles])
    models.save_bundle(out / "ensemble.pt", ensemble, fs.label_names, fs.spec.to_dict(),
                       {"recipe": recipe.name, "protocol": result.protocol, "summary": result.summary, "members": [str(p) for p in members],
                        "checkpoint": recipe.checkpoint})


#: The plus recipe's switches, each turned off alone for the ablation (section.field: value when off);
#: the pooling row swaps the recipe's plain mean over time for learned attention weights.
ABLATION: dict[str, dict[str, Any]] = {
    "per-utterance normalisation": {"features.normalise": "none"},
    "random crops (first 2 s instead)": {"augment.crop": False},
    "speed perturbation": {"augment.speed": 0.0},
    "SpecAugment": {"augment.specaugment": False},
    "mixup": {"augment.mixup": 0.0},
    "label smoothing": {"augment.label_smoothing": 0.0},
    "plain mean pooling (attention weights instead)": {"model.pooling": "attention"},
    "cosine LR + weight decay (constant LR, Adam)": {"train.schedule": "constant", "train.weight_decay": 0.0},
    "test-time speed copies": {"model.speeds": [1.0]},
}


def override(recipe: CVRecipe, changes: dict[str, Any]) -> CVRecipe:
    """The recipe with ``section.field`` values replaced (``augment.mixup``, ``model.pooling`` ...)."""
    data = recipe.to_dict()
    for name, value in changes.items():
        section, _, fld = name.partition(".")
        if not fld:
            data[section] = value
            continue
        if data.get(section) is None and section == "augment":
            data[section] = PlusConfig(crop=False, speed=0.0, specaugment=False, mixup=0.0, label_smoothing=0.0).to_dict()
        if not isinstance(data.get(section), dict):
            raise CVError(f"the recipe has no section {section!r}")
        data[section][fld] = value
    return CVRecipe.from_dict(data)


def ablation(fs_for: Callable[[CVRecipe], FeatureSet], recipe: CVRecipe, out: str | Path, *, folds: int | None = None,
             seeds: tuple[int, ...] = (0,), device: str = "cpu", progress: bool = True,
             switches: dict[str, dict[str, Any]] | None = None, base: CVResult | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The recipe as is, then with each switch off alone, on the same folds and seeds.

    ``fs_for`` gives the feature set a variant needs (a switch of the features, such
    as the normalisation, needs its own extraction). Writes OUT/ablation.md/.csv/.json
    and one sub-folder per variant (each resumable); returns the table rows, each with
    the paired UA difference from the recipe (fold by fold and seed by seed: the folds
    differ far more than the switches, so only paired differences say much). ``base``:
    the recipe's own result on the same folds and seeds, if already run. A switch of
    inference alone (:data:`INFERENCE_ONLY`) rescores the recipe's own fold models."""
    from ser.study import report

    out = Path(out)
    variants = {"all switches on": {}, **(switches if switches is not None else ABLATION)}
    trained = base.out if base is not None else out / "variant-00"  # the recipe's own folds: what inference switches rescore
    rows: list[dict[str, Any]] = []
    base_ua: dict[tuple[int, int], float] = {}
    for i, (name, changes) in enumerate(variants.items()):
        variant = override(recipe, changes)
        if i == 0 and base is not None:
            result = base
        else:
            log(f"ablation {i}/{len(variants) - 1}: {name} off")
            result = run(fs_for(variant), variant, out / f"variant-{i:02d}", folds=folds, seeds=seeds, device=device, progress=progress,
                         trained=trained if i else None, log=log)
        s = result.summary
        if i == 0:
            base_ua = {(f.fold, f.seed): f.ua for f in result.folds}
        delta = np.array([100 * (f.ua - base_ua[(f.fold, f.seed)]) for f in result.folds if (f.fold, f.seed) in base_ua])
        rows.append({"switched off": name if changes else "(none: the recipe)", "changes": ", ".join(f"{k}={v}" for k, v in changes.items()),
                     "ua": f"{100 * s['ua']['mean']:.1f} +- {100 * s['ua']['std']:.1f}", "wa": f"{100 * s['wa']['mean']:.1f} +- {100 * s['wa']['std']:.1f}",
                     "macro_f1": f"{100 * s['macro_f1']['mean']:.1f} +- {100 * s['macro_f1']['std']:.1f}",
                     "delta_ua": f"{delta.mean():+.1f} +- {delta.std():.1f}", "lower_on": f"{int((delta < 0).sum())} of {delta.size}",
                     "runs": s["ua"]["n"]})
        protocol = result.protocol
        report.write_table(rows, out / "ablation", ("switched off", "changes", "ua", "wa", "macro_f1", "delta_ua", "lower_on", "runs"),
                           title=f"Ablation of the {recipe.name} recipe, {protocol}, {len(seeds)} seed(s): each switch off alone "
                                 "(UA, WA, macro F1 in %, mean +- std; delta_ua: the paired UA difference from the recipe on the "
                                 "same fold and seed, mean +- std; lower_on: the runs where the switch off scored lower)")
    files.write_json(out / "ablation.json", rows)
    return rows
