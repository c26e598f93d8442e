"""The study's architecture search (METHOD.md sections 4-6): k-fold scoring with
early stopping, the four qualification stages, and their outputs.

The pieces it runs on live beside it: :mod:`ser.study.search_space` (grids, vectors,
perturbations), :mod:`ser.study.recipes` (the search as data), :mod:`ser.study.ranking` (the
study's Table 2).

- :func:`score_vector`: k-fold cross-validation of one vector on the training side
  only, with early stopping (rules A, B, C from :mod:`ser.study.stopping`); each finished
  (vector, fold) is a JSON file ``workdir/<vector id>/fold<k>.json`` that a rerun
  reuses, and an unfinished fold resumes from its training checkpoint.
- :func:`run_stage` / :func:`run_search`: the four stages, each written out by
  :func:`write_stage` (rankings, results, and after the final stage the winner).

Losses are cross-entropy on logits (the study applied softmax twice; its losses are
not comparable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ser.study import models, splits, stopping, training
from ser.data.dataset import FeatureSet
from ser.files import jsonable, write_json
from ser.study.models import ArchSpec
from ser.study.ranking import as_float, best, sort_ranking, vector_columns, vector_from_row, write_ranking
from ser.study.recipes import Recipe, StageConfig
from ser.study.search_space import SearchError, Vector, perturbations, sample_vectors


# =========================================================================== scoring


@dataclass
class FoldResult:
    """One finished fold: its score (at ``score_at``: the last or the best epoch),
    how long it ran and why it stopped."""

    fold: int
    n_train: int
    n_val: int
    cap: int
    epochs: int  # epochs run ("epochs needed")
    best_epoch: int
    stopped_by: str | None
    abandoned: bool  # an A rule fired: the vector is abandoned
    c_rule: str | None  # rule C fired after this fold
    train_loss: float
    val_loss: float
    accuracy: float
    macro_f1: float
    seconds: float
    last: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, history: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not history:
            data.pop("history")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FoldResult":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("train_loss", "val_loss", "accuracy", "macro_f1", "seconds"):
            values[name] = as_float(values.get(name))
        return cls(**values)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), float(np.std(vals))


@dataclass
class VectorResult:
    """A vector's cross-validation: fold means and spreads (population standard
    deviation over folds), the rule that abandoned it if any, and its folds."""

    vector: Vector
    folds: list[FoldResult]
    n_folds: int
    abandoned: bool = False
    abandoned_by: str | None = None
    rules: str = ""
    stage: int | None = None
    qualified: bool = False
    trained_folds: int = 0  # folds trained by this call (the rest were reused)

    @property
    def complete(self) -> bool:
        return len(self.folds) == self.n_folds and not self.abandoned

    def stat(self, name: str) -> tuple[float, float]:
        return _mean_std([getattr(f, name) for f in self.folds])

    @property
    def macro_f1(self) -> float:
        return self.stat("macro_f1")[0]

    @property
    def accuracy(self) -> float:
        return self.stat("accuracy")[0]

    @property
    def seconds(self) -> float:
        return float(sum(f.seconds for f in self.folds))

    @property
    def stopped_by(self) -> str:
        """The rule that ended each fold, e.g. "B1 cap cap cap cap"; "A2" / "C1" last
        when a rule abandoned the vector."""
        rules = [f.stopped_by or "-" for f in self.folds]
        if self.abandoned and self.abandoned_by and (not rules or rules[-1] != self.abandoned_by):
            rules.append(self.abandoned_by)
        return " ".join(rules)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.vector.id, "folds": len(self.folds), "abandoned": self.abandoned, "abandoned_by": self.abandoned_by}
        for name in ("train_loss", "val_loss", "accuracy", "macro_f1"):
            out[name], out[f"{name}_std"] = self.stat(name)
        out["epochs"] = _mean_std([float(f.epochs) for f in self.folds])[0]
        out["seconds"] = self.seconds
        return out

    def to_row(self) -> dict[str, Any]:
        """The vector's row of the ranking table."""
        row = vector_columns(self.vector)
        row["stage"] = self.stage
        s = self.summary()
        row.update({k: s[k] for k in ("train_loss", "train_loss_std", "val_loss", "val_loss_std", "accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "seconds", "epochs", "folds")})
        row["fold_epochs"] = " ".join(str(f.epochs) for f in self.folds)
        row["best_epoch"] = _mean_std([float(f.best_epoch) for f in self.folds])[0]
        row.update({"stopped_by": self.stopped_by, "abandoned": self.abandoned, "qualified": self.qualified, "rules": self.rules})
        return row

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector.to_dict(),
            "stage": self.stage,
            "rules": self.rules,
            "n_folds": self.n_folds,
            "abandoned": self.abandoned,
            "abandoned_by": self.abandoned_by,
            "qualified": self.qualified,
            "summary": self.summary(),
            "folds": [f.to_dict(history=False) for f in self.folds],
        }


def data_fingerprint(features: FeatureSet, idx: np.ndarray) -> str:
    """Hash of the rows a search trains on (their source ids, copies and labels)."""
    h = hashlib.sha256()
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    for name in ("source_id", "group", "augment"):
        h.update("\n".join(getattr(features, name)[idx].astype(str).tolist()).encode())
    h.update(np.ascontiguousarray(features.labels[idx], dtype=np.int64).tobytes())
    h.update(json.dumps(features.spec.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _fold_seed(seed: int, fold: int) -> int:
    return int(seed) * 1009 + int(fold)


def _score_record(history: Sequence[training.EpochRecord], best_epoch: int, score_at: str) -> tuple[training.EpochRecord | None, training.EpochRecord | None]:
    evaluated = [r for r in history if r.evaluated]
    last = evaluated[-1] if evaluated else None
    best = next((r for r in evaluated if r.epoch == best_epoch), last)
    return last, best


def _tracker_run(tracker: Any, name: str, kind: str, params: Mapping[str, Any], tags: Mapping[str, Any]):
    if tracker is None:
        return contextlib.nullcontext()
    return tracker.run(name, kind, dict(params), dict(tags))


def score_vector(
    vector: Vector,
    features: FeatureSet,
    train_idx: Sequence[int] | np.ndarray | None,
    rules: stopping.Rules,
    folds: int = 5,
    seed: int = 0,
    epochs: int | None = None,
    workdir: str | Path = ".ser/search",
    device: str = "auto",
    tracker: Any = None,
    *,
    protocol: str = "random",
    score_at: str = "last",
    eval_every: int = 1,
    progress: bool = False,
    keep_checkpoints: bool = False,
    checkpoint_every: int = 1,
    stage: int | None = None,
) -> VectorResult:
    """k-fold cross-validation of ``vector`` on the rows ``train_idx`` of ``features``
    (the training side of the search split; None: every row), with early stopping.

    Per fold: a :class:`ser.study.stopping.FoldStopper` (rules A and B; A abandons the
    vector); across folds a :class:`ser.study.stopping.VectorStopping` (a B stop at epoch
    e caps later folds at e; rule C after each fold). ``epochs`` overrides the
    rules' maximum epochs. Each finished fold is written to
    ``workdir/<vector id>/fold<k>.json`` and reused by a later call with the same
    settings (a fold is never trained twice); an unfinished fold resumes from
    ``workdir/<vector id>/fold<k>.ckpt``. A workdir holding the same vector under
    other settings (rules, folds, seed, data) is refused with :class:`SearchError`.

    The fold's training checkpoint is written every ``checkpoint_every`` epochs (and
    when the fold stops) and deleted once the fold's JSON exists (unless
    ``keep_checkpoints``). The fold's score is its metrics at the last evaluated epoch (``score_at="last"``,
    where training stopped) or at the lowest validation loss (``"best"``).
    """
    if score_at not in ("last", "best"):
        raise SearchError(f"score_at must be 'last' or 'best', got {score_at!r}")
    if features.spec.kind != vector.feature or int(features.images.shape[-1]) != vector.size:
        raise SearchError(
            f"vector {vector.id} is for {vector.feature} {vector.size}x{vector.size}, the feature set is "
            f"{features.spec.kind} {features.images.shape[-1]}x{features.images.shape[-1]}"
        )
    if vector.arch.n_classes != len(features.label_names):
        raise SearchError(f"vector {vector.id} has {vector.arch.n_classes} outputs, the feature set {len(features.label_names)} classes")
    idx = np.arange(len(features)) if train_idx is None else np.asarray(train_idx, dtype=np.int64)
    if epochs is not None:
        rules = replace(rules, max_epochs=int(epochs))
    fold_splits = splits.kfold(features, idx, k=folds, seed=seed, protocol=protocol)
    vdir = Path(workdir) / vector.id
    context = {
        "vector": vector.content(),
        "folds": int(folds),
        "seed": int(seed),
        "protocol": protocol,
        "rules": rules.to_dict(),
        "score_at": score_at,
        "eval_every": int(eval_every),
        "data": data_fingerprint(features, idx),
    }
    ctx_path = vdir / "context.json"
    if ctx_path.is_file():
        old = json.loads(ctx_path.read_text(encoding="utf-8"))
        if old != jsonable(context):
            changed = sorted(k for k in set(old) | set(context) if old.get(k) != jsonable(context).get(k))
            raise SearchError(
                f"{vdir} holds results of vector {vector.id} under other settings (changed: {', '.join(changed)}); "
                "use another workdir or delete that folder"
            )
    else:
        write_json(ctx_path, context)

    vs = stopping.VectorStopping(rules)
    result = VectorResult(vector, [], int(folds), rules=stopping.rules_name(rules), stage=stage)
    params = vector_columns(vector)
    tags = {"vector_id": vector.id, "origin": vector.origin, **({"stage": stage} if stage is not None else {})}
    from tqdm import tqdm

    bar = tqdm(total=folds, desc=f"folds {vector.id}", unit="fold", leave=False, disable=not progress, dynamic_ncols=True)
    with _tracker_run(tracker, f"vector {vector.id}", "vector", params, tags):
        for k, (tr, va) in enumerate(fold_splits):
            path = vdir / f"fold{k}.json"
            if path.is_file():
                fold = FoldResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
                vs.record_stop(fold.stopped_by, fold.epochs)
            else:
                fold = _train_fold(vector, features, tr, va, k, vs, seed, eval_every, device, vdir, score_at, tracker, params, tags,
                                   progress, checkpoint_every)
                result.trained_folds += 1
                if not keep_checkpoints:  # the fold's JSON is its result now; a checkpoint can be large
                    (vdir / f"fold{k}.ckpt").unlink(missing_ok=True)
            result.folds.append(fold)
            bar.update()
            if fold.abandoned:
                result.abandoned, result.abandoned_by = True, fold.stopped_by
                break
            c_rule = vs.after_fold(fold.macro_f1, fold.accuracy)
            if c_rule is not None:
                if fold.c_rule != c_rule:
                    fold.c_rule = c_rule
                    write_json(path, fold.to_dict())
                result.abandoned, result.abandoned_by = True, c_rule
                break
        if tracker is not None:
            summary = result.summary()
            tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))}, len(result.folds))
    bar.close()
    return result


def _train_fold(vector, features, tr, va, k, vs, seed, eval_every, device, vdir, score_at, tracker, params, tags, progress, checkpoint_every) -> FoldResult:
    cfg = vector.train_config(epochs=vs.cap, seed=_fold_seed(seed, k), eval_every=eval_every, device=device)
    training.seed_everything(cfg.seed)
    model = models.build(vector.arch)
    stopper = vs.fold_stopper()
    t0 = time.perf_counter()
    fold_params = {**params, "fold": k, "n_train": int(len(tr)), "n_val": int(len(va)), "cap": vs.cap}
    with _tracker_run(tracker, f"vector {vector.id} fold {k}", "fold", fold_params, {**tags, "fold": k}):
        fitted = training.fit(
            model,
            features.subset(tr),
            features.subset(va),
            cfg,
            stopper=stopper,
            checkpoint=vdir / f"fold{k}.ckpt",
            on_epoch=tracker.epoch_callback() if tracker is not None else None,
            progress=progress,
            checkpoint_every=checkpoint_every,
            desc=f"{vector.id} fold {k}",
        )
        wall = time.perf_counter() - t0
        stopped_by = fitted.stopped_by or "max_epochs"
        if stopper.decision is None:  # resumed from a checkpoint that had already stopped
            vs.record_stop(stopped_by, fitted.epochs_run)
        last, best = _score_record(fitted.history, fitted.best_epoch, score_at)
        scored = last if score_at == "last" else best
        fold = FoldResult(
            fold=k,
            n_train=int(len(tr)),
            n_val=int(len(va)),
            cap=int(cfg.epochs),
            epochs=int(fitted.epochs_run),
            best_epoch=int(fitted.best_epoch),
            stopped_by=stopped_by,
            abandoned=bool(fitted.abandoned),
            c_rule=None,
            train_loss=scored.train_loss if scored else math.nan,
            val_loss=scored.val_loss if scored else math.nan,
            accuracy=scored.accuracy if scored else math.nan,
            macro_f1=scored.macro_f1 if scored else math.nan,
            seconds=max(wall, float(fitted.seconds)),
            last=last.to_dict() if last else {},
            best=best.to_dict() if best else {},
            history=[r.to_dict() for r in fitted.history],
        )
        if tracker is not None:
            tracker.log_metrics({f"fold_{n}": v for n in ("train_loss", "val_loss", "accuracy", "macro_f1")
                                 if not math.isnan(v := getattr(fold, n))} | {"fold_epochs": fold.epochs}, k)
    write_json(vdir / f"fold{k}.json", fold.to_dict())
    return fold


# =========================================================================== stages


@dataclass
class StageResult:
    """What a stage produced: the vectors it scored, the ranking after it (merged
    with the previous one where the stage says so) and, for the final stage, the winner."""

    stage: StageConfig
    results: list[VectorResult]
    ranking: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    winner: dict[str, Any] | None = None

    @property
    def listed(self) -> list[dict[str, Any]]:
        return [r for r in self.ranking if r.get("qualified")]


def search_split(feature_sets: Mapping[tuple[str, int], FeatureSet], protocol: str = "random", seed: int = 0,
                 test_size: float = 0.2) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, Any]]:
    """The training rows of every feature set under ONE 80/20 split.

    The split is drawn on the first feature set (sorted by (kind, size)); its test
    sources are held out of every feature set, so no feature kind or size ever
    trains on a test utterance. Returns (training rows per key, a description)."""
    if not feature_sets:
        raise SearchError("no feature sets given")
    keys = sorted(feature_sets)
    ref = feature_sets[keys[0]]
    try:
        _, test = splits.train_test(ref, test_size=test_size, seed=seed, protocol=protocol)
    except ValueError as exc:
        raise SearchError(f"cannot split {keys[0][0]} {keys[0][1]}: {exc}") from None
    test_sources = set(ref.source_id[test].tolist())
    out, sizes = {}, {}
    for key in keys:
        train, _ = splits.held_out_rows(feature_sets[key], test_sources)
        out[key] = train
        sizes[f"{key[0]}-{key[1]}"] = {"train_rows": int(train.size), "held_out_rows": int(len(feature_sets[key]) - train.size)}
    desc = {"protocol": protocol, "seed": int(seed), "test_size": float(test_size), "reference": f"{keys[0][0]}-{keys[0][1]}",
            "test_sources": len(test_sources), "rows": sizes, "test_source_ids": sorted(test_sources),
            "note": "the search sees only the training side; the test side is for the final model"}
    return out, desc


def read_held_out(path: str | Path) -> list[str]:
    """The held-out source ids a search recorded in its ``search.json``."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchError(f"cannot read the search's split from {path}: {exc}") from None
    ids = (meta.get("split") or {}).get("test_source_ids") if isinstance(meta, dict) else None
    if not ids:
        raise SearchError(f"{path} records no held-out sources (split.test_source_ids): a search.json written by `ser search` is needed")
    return [str(i) for i in ids]


#: Slack for the fold means: five folds at exactly 60% must average to 60%, not 59.99...%.
_QUALIFY_SLACK = 1e-9


def qualifies(result: VectorResult, thresholds: tuple[float, float]) -> bool:
    """A vector is listed when every fold ran (no rule abandoned it) and its mean
    macro F1 AND mean accuracy both reach the stage's thresholds (the study: 60% and
    60%), a score equal to the threshold included."""
    f1, acc = result.macro_f1, result.accuracy
    if not result.complete or math.isnan(f1) or math.isnan(acc):
        return False
    return f1 >= thresholds[0] - _QUALIFY_SLACK and acc >= thresholds[1] - _QUALIFY_SLACK


def plan_vectors(
    st: StageConfig,
    recipe: Recipe,
    available: Sequence[tuple[str, int]],
    n_classes: Callable[[tuple[str, int]], int],
    previous: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[Vector], list[Any], list[Any]]:
    """The vectors stage ``st`` scores, without duplicates: new random draws for each of
    its combinations that has a feature set in ``available``, perturbations of the best
    of ``previous``, or (final stage) the best of ``previous`` again. Also returns the
    random combinations used and those left out for want of a feature set. The local
    search and the pipeline's plan step both pick vectors here."""
    vectors: list[Vector] = []
    combos: list[Any] = []
    missing: list[Any] = []
    if st.kind == "random":
        combos, missing = st.combinations(available)
        for combo in combos:
            vectors += sample_vectors(recipe.grid, combo.vectors, recipe.seed, combo.cnn, combo.size, feature=combo.feature,
                                      n_classes=n_classes(combo.key), leaky_slope=combo.leaky_slope, stream=st.stream)
    else:
        if not previous:
            raise SearchError(f"stage {st.number} ({st.kind}) starts from the previous stage's ranking: none given")
        parents = [vector_from_row(r) for r in best(previous, st.take)]
        if st.kind == "perturb":
            seen = {r["id"] for r in previous}
            for parent in parents:
                children = perturbations(parent, st.vectors, recipe.seed + 1000 * st.stream, recipe.perturbation, recipe.scale, exclude=seen)
                seen.update(c.id for c in children)
                vectors += children
        else:
            vectors = parents
    return list({v.id: v for v in vectors}.values()), combos, missing


def run_stage(
    stage_cfg: StageConfig,
    feature_sets: Mapping[tuple[str, int], FeatureSet],
    previous: Sequence[Mapping[str, Any]] | None = None,
    *,
    recipe: Recipe,
    workdir: str | Path,
    train_idx: Mapping[tuple[str, int], np.ndarray] | None = None,
    device: str = "auto",
    tracker: Any = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> StageResult:
    """Run one stage (see :class:`StageConfig`) on the training rows ``train_idx``
    of ``feature_sets`` (keyed by (kind, size); None: all rows). Folds land under
    ``workdir/stage<n>/<vector id>/`` and are reused by a rerun.

    ``tracker`` (optional; e.g. :class:`ser.adapters.tracking.Tracker`): an object with
    ``run(name, kind, params, tags)`` (a context manager), ``log_metrics(dict, step)``
    and ``epoch_callback()``; the stage opens a "stage" run, each vector a nested
    "vector" run, each trained fold a nested "fold" run with per-epoch metrics."""
    from tqdm import tqdm

    log = log or (lambda _msg: None)
    st = stage_cfg
    available = list(feature_sets)
    vectors, combos, missing = plan_vectors(st, recipe, available, lambda key: len(feature_sets[key].label_names), previous)
    skipped = [f"{c.label()}: no {c.feature} {c.size}x{c.size} feature set given" for c in missing]
    if st.kind == "random" and not combos:
        msg = f"stage {st.number}: none of its combinations has a feature set (given: {sorted(available)})"
        if not st.merge or previous is None:
            raise SearchError(msg)
        log(msg + "; keeping the previous ranking")
    for v in vectors if st.kind != "random" else ():
        if v.key not in feature_sets:
            raise SearchError(f"stage {st.number}: vector {v.id} trains on {v.feature} {v.size}x{v.size}, which was not given")
    schedule = "".join(f"; {rule} from vector {math.ceil(at * len(vectors)) + 1}" for at, rule in st.c_schedule)
    log(f"stage {st.number} ({st.kind}): {len(vectors)} vectors, {recipe.folds}-fold CV, up to {st.max_epochs} epochs, rules {stopping.rules_name(st.rules)}{schedule}")
    results: list[VectorResult] = []
    stage_dir = Path(workdir) / f"stage{st.number}"
    bar = tqdm(vectors, desc=f"stage {st.number} vectors", unit="vector", disable=not progress, dynamic_ncols=True)
    stage_params = {"recipe": recipe.name, "recipe_hash": recipe.hash(), "stage": st.number, "kind": st.kind, "vectors": len(vectors),
                    "folds": recipe.folds, "max_epochs": st.max_epochs, "rules": stopping.rules_name(st.rules), "split": recipe.split,
                    "seed": recipe.seed}
    with _tracker_run(tracker, f"stage {st.number}", "stage", stage_params, {"stage": st.number}):
        for position, vector in enumerate(bar):
            fs = feature_sets[vector.key]
            idx = None if train_idx is None else train_idx[vector.key]
            result = score_vector(vector, fs, idx, st.rules_at(position, len(vectors)), folds=recipe.folds, seed=recipe.seed, epochs=st.max_epochs,
                                  workdir=stage_dir, device=device, tracker=tracker, protocol=recipe.split, score_at=recipe.score_at,
                                  eval_every=recipe.eval_every, checkpoint_every=recipe.checkpoint_every, progress=progress,
                                  stage=st.number)
            result.qualified = qualifies(result, st.thresholds)
            results.append(result)
            bar.set_postfix({"f1": f"{result.macro_f1:.3f}"}, refresh=False)
        bar.close()
        rows = [r.to_row() for r in results]
        if st.kind in ("perturb",) or (st.kind == "random" and st.merge):
            rows = list(previous or []) + rows
        ranking = sort_ranking(rows)
        if tracker is not None and ranking:
            top = ranking[0]
            tracker.log_metrics({"listed": sum(bool(r.get("qualified")) for r in ranking), "ranked": len(ranking),
                                 "abandoned": sum(r.abandoned for r in results),
                                 **({"best_macro_f1": top["macro_f1"]} if not math.isnan(as_float(top.get("macro_f1"))) else {})}, st.number)
    winner = ranking[0] if st.kind == "final" and ranking else None
    return StageResult(st, results, ranking, skipped, winner)


# =========================================================================== outputs


def winner_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """The winner as a ``ser train --config`` file: {"arch": ArchSpec, "train": {...}}."""
    v = vector_from_row(row)
    return {"arch": v.arch.to_dict(), "train": {"batch_size": v.batch_size, "lr": v.lr}}


def load_winner(path: str | Path) -> tuple[ArchSpec, dict[str, Any]]:
    """(ArchSpec, train settings) of a ``winner.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return ArchSpec.from_dict(data["arch"]), dict(data.get("train") or {})


def write_stage(result: StageResult, out_dir: str | Path, meta: Mapping[str, Any], feature_specs: Mapping[tuple[str, int], Any] | None = None) -> dict[str, Path]:
    """Write a stage's outputs under ``out_dir/stage<n>/`` (ranking.csv/.md,
    results.json) and copy the ranking to ``out_dir/ranking.csv/.md``; the final
    stage also writes ``out_dir/winner.json`` (``ser train --config``) and
    ``out_dir/winner_meta.json`` (feature spec, scores, split, seed, recipe hash)."""
    out_dir = Path(out_dir)
    st = result.stage
    sdir = out_dir / f"stage{st.number}"
    split = meta.get("split", {})
    notes = [
        f"Stage {st.number} ({st.kind}) of recipe `{meta.get('recipe')}` (hash {meta.get('recipe_hash')}); "
        f"{meta.get('folds')}-fold CV on the training side of a {split.get('protocol')} "
        f"{round(100 * (1 - float(split.get('test_size', 0.2))))}/{round(100 * float(split.get('test_size', 0.2)))} split, seed {split.get('seed')}.",
        f"Listed (≥ {100 * st.thresholds[0]:.0f}% macro F1 and ≥ {100 * st.thresholds[1]:.0f}% accuracy): "
        f"{len(result.listed)} of {len(result.ranking)}. Scores: mean ± std over folds. Losses are cross-entropy on logits.",
    ]
    if result.skipped:
        notes.append(f"Skipped for want of features: {'; '.join(result.skipped)}.")
    curves_png = None
    if st.kind == "final" and result.results:
        # The study read the four's curves to pick its winner; the software applies a
        # rule, and shows the curves that rule is checked against.
        from ser.study import report

        curves = {r.vector.id: report.fold_mean_history([f.history for f in r.folds]) for r in result.results}
        winner_id = result.winner["id"] if result.winner else None
        curves_png = report.plot_candidates(curves, sdir / "curves.png", f"Stage {st.number}: the {len(curves)} candidates", winner_id)
        notes.append(
            f"Winner rule: rank 1 of this ranking: vectors over the thresholds first, then by mean macro F1 over the folds "
            f"(measured at the fold's {meta.get('score_at', 'last')} epoch), ties by mean accuracy. The study chose by reading "
            f"the candidates' learning curves: fold-mean validation loss and macro F1 per epoch are in curves.png.")
    title = f"Ranking after stage {st.number}"
    paths: dict[str, Path] = {}
    paths["csv"], paths["md"] = write_ranking(result.ranking, sdir, title, notes)
    write_ranking(result.ranking, out_dir, title, notes)
    stage_meta = {**meta, "stage": st.to_dict() | {"number": st.number}, "skipped": result.skipped,
                  "results": [r.to_dict() for r in result.results]}
    paths["results"] = write_json(sdir / "results.json", stage_meta)
    if curves_png is not None:
        paths["curves"] = curves_png
    if result.winner is not None:
        row = result.winner
        v = vector_from_row(row)
        paths["winner"] = write_json(out_dir / "winner.json", winner_config(row))
        spec = (feature_specs or {}).get(v.key)
        paths["winner_meta"] = write_json(out_dir / "winner_meta.json", {
            "config": winner_config(row),
            "feature": spec.to_dict() if hasattr(spec, "to_dict") else spec,
            "vector": v.to_dict(),
            "scores": {k: row.get(k) for k in ("macro_f1", "macro_f1_std", "accuracy", "accuracy_std", "val_loss", "val_loss_std", "train_loss", "epochs", "fold_epochs")},
            "stage": st.number,
            "epochs": st.max_epochs,
            **meta,
        })
    return paths


@dataclass
class SearchOutcome:
    stages: list[StageResult]
    split: dict[str, Any]
    paths: dict[int, dict[str, Path]]

    @property
    def ranking(self) -> list[dict[str, Any]]:
        return self.stages[-1].ranking if self.stages else []

    @property
    def winner(self) -> dict[str, Any] | None:
        return self.stages[-1].winner if self.stages else None


def run_search(
    recipe: Recipe,
    feature_sets: Mapping[tuple[str, int], FeatureSet],
    stages: Sequence[int] | None = None,
    *,
    out: str | Path,
    workdir: str | Path | None = None,
    previous: Sequence[Mapping[str, Any]] | None = None,
    device: str = "auto",
    tracker: Any = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    sources: Mapping[tuple[str, int], str] | None = None,
) -> SearchOutcome:
    """Run ``stages`` (default: all of the recipe's, in order) on the training side
    of one seeded 80/20 split, each stage starting from the previous one's ranking
    (``previous`` for the first stage run, when it is not stage 1). Writes every
    stage's outputs under ``out`` (see :func:`write_stage`); folds under ``workdir``
    (default ``out/work``) make a rerun resume where it stopped."""
    out = Path(out)
    workdir = Path(workdir) if workdir is not None else out / "work"
    log = log or print
    numbers = sorted(recipe.stages) if stages is None else [int(s) for s in stages]
    train_idx, split_desc = search_split(feature_sets, recipe.split, recipe.seed, recipe.test_size)
    meta = {
        "recipe": recipe.name, "recipe_source": recipe.source, "recipe_hash": recipe.hash(), "seed": recipe.seed,
        "folds": recipe.folds, "split": split_desc, "score_at": recipe.score_at, "device": device,
        "features": {f"{k}-{s}": {"spec": fs.spec.to_dict(), "rows": len(fs), "classes": list(fs.label_names),
                                   "source": (sources or {}).get((k, s))} for (k, s), fs in sorted(feature_sets.items())},
        "recipe_config": recipe.to_dict(),
    }
    write_json(out / "search.json", {**meta, "stages": numbers})
    ranking = list(previous) if previous is not None else None
    done: list[StageResult] = []
    paths: dict[int, dict[str, Path]] = {}
    for number in numbers:
        result = run_stage(recipe.stage(number), feature_sets, ranking, recipe=recipe, workdir=workdir, train_idx=train_idx,
                           device=device, tracker=tracker, progress=progress, log=log)
        paths[number] = write_stage(result, out, meta, {k: fs.spec for k, fs in feature_sets.items()})
        for note in result.skipped:
            log(f"  skipped {note}")
        log(f"stage {number}: {len(result.listed)} of {len(result.ranking)} vectors listed -> {paths[number]['md']}")
        done.append(result)
        ranking = result.ranking
    return SearchOutcome(done, split_desc, paths)
