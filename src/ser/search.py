"""The study's architecture search (METHOD.md sections 4-6): grids, random search,
k-fold scoring with early stopping, the four qualification stages and the ranking
table (the study's Table 2).

The science is data: a *recipe* (``ser/recipes/study.yaml``, ``demo.yaml`` or a copy
a user edits) holds the grids, the stages, their budgets, the stopping rules and the
listing thresholds. This module only interprets it.

Pieces, top to bottom:

- :class:`SearchSpace`: the grids of secondary parameters; :func:`sample_vectors`
  draws parameter vectors. Vector ``i`` of a stage is drawn from a generator seeded
  by (seed, stage stream, i) only, so the first ten vectors of every (CNN, feature,
  size) combination share their secondary parameters (the study's design); a vector
  whose pooling chain does not fit an input size is redrawn deterministically
  (attempt 1, 2 ...) and the redraw is recorded in ``Vector.redraws``.
- :func:`perturb`: stage 3, with the study's perturbation tables (:class:`PerturbTable`).
- :func:`score_vector`: k-fold cross-validation of one vector on the training side
  only, with early stopping (rules A, B, C from :mod:`ser.stopping`); each finished
  (vector, fold) is a JSON file ``workdir/<vector id>/fold<k>.json`` that a rerun
  reuses, and an unfinished fold resumes from its training checkpoint.
- :func:`run_stage` / :func:`run_search`: the four stages; :func:`write_ranking`,
  :func:`load_ranking`, :func:`best`: the ranking table (CSV + Markdown).

Scores are fractions (0..1) in files and percentages in Markdown. Losses are
cross-entropy on logits (the study applied softmax twice; its losses are not
comparable).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ser import models, splits, stopping, training
from ser.dataset import FeatureSet
from ser.models import CNNS, ArchSpec, SpecError


class SearchError(ValueError):
    """A search that cannot run as asked (bad recipe, missing features, foreign workdir)."""


# =========================================================================== grids


def _arange(start: float, stop: float, step: float) -> tuple:
    """Inclusive grid start..stop by step; integers stay integers, floats are rounded
    to the step's decimals (0.1 * 3 is 0.3, not 0.30000000000000004)."""
    if step <= 0:
        raise SearchError(f"grid step must be positive, got {step}")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if all(float(x).is_integer() for x in (start, stop, step)):
        return tuple(int(start + i * step) for i in range(n))
    decimals = max(_decimals(start), _decimals(step))
    return tuple(round(start + i * step, decimals) for i in range(n))


def _decimals(x: float) -> int:
    text = repr(float(x))
    if "e" in text:
        return 12
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0


#: The study's learning-rate grid (METHOD.md section 4).
LR_GRID: tuple[float, ...] = (2e-8, 6e-8, 1e-7, 5e-7, 1e-6, 3e-6, 6e-6, 9e-6, 2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 3e-4, 7e-4)


def _grid(value: Any, name: str, kind: type = float) -> tuple:
    """A grid from the recipe: a list, a ``{start, stop, step}`` mapping or one value."""
    if isinstance(value, Mapping):
        try:
            values = _arange(float(value["start"]), float(value["stop"]), float(value["step"]))
        except KeyError as exc:
            raise SearchError(f"grid {name}: a range needs start, stop and step (missing {exc})") from None
    elif isinstance(value, (list, tuple)):
        values = tuple(value)
    else:
        values = (value,)
    if not values:
        raise SearchError(f"grid {name} is empty")
    try:
        out = tuple(int(round(float(v))) if kind is int else float(v) for v in values)
    except (TypeError, ValueError):
        raise SearchError(f"grid {name} holds a non-number: {list(values)}") from None
    return out


@dataclass(frozen=True)
class SearchSpace:
    """The grids of secondary parameters (METHOD.md section 4).

    Each conv layer draws its own channels, kernel, pooling kernel and stride; each
    of FC1 and FC2 its own features. ``leaky_slope`` is not drawn: it is CharmaNET's
    slope (0.01 in the study; the stage-1 extras use 0.005 and 0.050).
    """

    conv_channels: tuple[int, ...] = _arange(100, 420, 16)
    conv_kernels: tuple[int, ...] = (2, 3)
    pool_kernels: tuple[int, ...] = (2, 3)
    pool_strides: tuple[int, ...] = (2, 3)
    bn_momentum: tuple[float, ...] = _arange(0.1, 0.9, 0.1)
    dropout: tuple[float, ...] = _arange(0.25, 0.50, 0.05)
    fc_features: tuple[int, ...] = _arange(1024, 4224, 128)
    batch_size: tuple[int, ...] = (16, 32, 48, 64)
    lr: tuple[float, ...] = LR_GRID
    leaky_slope: float = 0.01

    _INT = ("conv_channels", "conv_kernels", "pool_kernels", "pool_strides", "fc_features", "batch_size")

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "leaky_slope":
                object.__setattr__(self, f.name, float(self.leaky_slope))
            else:
                object.__setattr__(self, f.name, _grid(getattr(self, f.name), f.name, int if f.name in self._INT else float))
        if min(self.conv_channels) < 1 or min(self.fc_features) < 1 or min(self.batch_size) < 1:
            raise SearchError("channel, FC feature and batch grids must hold positive numbers")
        if min(self.lr) <= 0:
            raise SearchError("learning rates must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SearchSpace":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SearchError(f"unknown search-space keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance((v := getattr(self, f.name)), tuple) else v) for f in fields(self)}

    def scaled(self, factor: float) -> "SearchSpace":
        """Channel and FC-feature grids multiplied by ``factor`` (rounded, at least 1,
        duplicates dropped): a demo-sized network with the study's shape."""
        if factor == 1.0:
            return self

        def scale(grid: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(dict.fromkeys(max(1, int(round(v * factor))) for v in grid))

        return replace(self, conv_channels=scale(self.conv_channels), fc_features=scale(self.fc_features))


# =========================================================================== vectors


@dataclass(frozen=True)
class Vector:
    """One parameter vector: architecture, batch size, learning rate, and the feature
    (kind and image size) it is trained on.

    ``id`` is a stable hash of that content, so the same vector has the same id in
    every run and every stage. ``origin`` and ``redraws`` say where it came from and
    are not part of the id.
    """

    arch: ArchSpec
    batch_size: int
    lr: float
    feature: str
    size: int
    origin: str = ""
    redraws: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "batch_size", int(round(float(self.batch_size))))
        set_(self, "lr", float(self.lr))
        set_(self, "size", int(round(float(self.size))))
        set_(self, "feature", str(self.feature))
        if self.arch.in_size != self.size:
            raise SearchError(f"vector for {self.size}x{self.size} images has an architecture for {self.arch.in_size}x{self.arch.in_size}")

    @property
    def cnn(self) -> str:
        return self.arch.cnn

    @property
    def key(self) -> tuple[str, int]:
        """The feature set this vector trains on: (kind, size)."""
        return (self.feature, self.size)

    def content(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "batch_size": self.batch_size, "lr": self.lr, "feature": self.feature, "size": self.size}

    @property
    def id(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def secondary(self) -> dict[str, Any]:
        """The drawn parameters, without the CNN, feature and size they are bound to."""
        a = self.arch
        return {
            "conv_channels": a.conv_channels,
            "conv_kernels": a.conv_kernels,
            "pool_kernels": a.pool_kernels,
            "pool_strides": a.pool_strides,
            "bn_momentum": a.bn_momentum,
            "dropout": a.dropout,
            "fc_features": a.fc_features,
            "leaky_slope": a.leaky_slope,
            "batch_size": self.batch_size,
            "lr": self.lr,
        }

    def train_config(self, **changes: Any) -> training.TrainConfig:
        return training.TrainConfig(batch_size=self.batch_size, lr=self.lr, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.content(), "origin": self.origin, "redraws": self.redraws}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Vector":
        arch = ArchSpec.from_dict(dict(data["arch"]))
        return cls(arch, data["batch_size"], data["lr"], data["feature"], data["size"], data.get("origin", ""), int(data.get("redraws", 0)))


def _pick(rng: np.random.Generator, grid: Sequence) -> Any:
    return grid[int(rng.integers(len(grid)))]


def draw_secondary(space: SearchSpace, rng: np.random.Generator) -> dict[str, Any]:
    """One draw of every secondary parameter, in a fixed order (uniform over each grid)."""
    return {
        "conv_channels": tuple(_pick(rng, space.conv_channels) for _ in range(3)),
        "conv_kernels": tuple(_pick(rng, space.conv_kernels) for _ in range(3)),
        "pool_kernels": tuple(_pick(rng, space.pool_kernels) for _ in range(3)),
        "pool_strides": tuple(_pick(rng, space.pool_strides) for _ in range(3)),
        "bn_momentum": _pick(rng, space.bn_momentum),
        "dropout": _pick(rng, space.dropout),
        "fc_features": tuple(_pick(rng, space.fc_features) for _ in range(2)),
        "batch_size": _pick(rng, space.batch_size),
        "lr": _pick(rng, space.lr),
    }


#: Redraws allowed for one vector before the space is declared unusable for a size.
MAX_REDRAWS = 1000


def sample_vectors(
    space: SearchSpace,
    n: int,
    seed: int,
    cnn: str,
    in_size: int,
    *,
    feature: str = "mel",
    n_classes: int = 7,
    leaky_slope: float | None = None,
    stream: int = 1,
    start: int = 0,
) -> list[Vector]:
    """Vectors ``start`` .. ``start + n - 1`` of a stage's random search for one
    (CNN, feature, size) combination.

    Vector i's secondary parameters come from a generator seeded by
    (``seed``, ``stream``, i, attempt) and nothing about the combination: every
    combination shares vector i (the study: "the first ten vectors the same for
    every combination"). Only when the draw cannot be built for ``in_size`` (the
    pooling chain shrinks the image below one pixel: :class:`SpecError`) is it
    redrawn with attempt 1, 2, ...; ``Vector.redraws`` records how many times.
    ``stream`` separates stages (stage 2 draws new vectors).
    """
    if cnn not in CNNS:
        raise SearchError(f"unknown CNN {cnn!r}; expected one of {CNNS}")
    slope = space.leaky_slope if leaky_slope is None else float(leaky_slope)
    out = []
    for i in range(start, start + int(n)):
        reasons: list[str] = []
        for attempt in range(MAX_REDRAWS + 1):
            params = draw_secondary(space, np.random.default_rng([int(seed), int(stream), i, attempt]))
            batch, lr = params.pop("batch_size"), params.pop("lr")
            try:
                arch = ArchSpec(cnn=cnn, in_size=in_size, n_classes=n_classes, leaky_slope=slope, **params)
            except SpecError as exc:
                reasons.append(str(exc))
                continue
            origin = f"stage{stream} #{i}" + (f" (redrawn {attempt}x: {reasons[0]})" if attempt else "")
            out.append(Vector(arch, batch, lr, feature, in_size, origin=origin, redraws=attempt))
            break
        else:
            raise SearchError(f"no buildable {cnn} vector for {in_size}x{in_size} images after {MAX_REDRAWS} draws: {reasons[-1]}")
    return out


# =========================================================================== perturbation (stage 3)


@dataclass(frozen=True)
class PerturbTable:
    """The study's stage-3 perturbations (METHOD.md section 5), each drawn uniformly.

    Conv channels (per layer) and FC features (per layer) get a delta; batch-norm
    momentum gets ``bn_momentum_low`` when at ``bn_momentum_min`` (0.1 stays 0.1 or
    becomes 0.2), else ``bn_momentum``; dropout a delta; CharmaNET a new LeakyReLU
    slope. Kernel sizes, pooling, batch size and LR are fixed. Results are clipped
    to what a network can use (channels and features >= 1, momentum within
    [min, max], dropout within [0, 0.9]).
    """

    conv_channels: tuple[int, ...] = (-32, -24, -16, -8, 0, 0, 8, 16, 24, 32)
    bn_momentum_low: tuple[float, ...] = (0.0, 0.1)
    bn_momentum: tuple[float, ...] = (-0.1, 0.0, 0.0, 0.0, 0.1)
    bn_momentum_min: float = 0.1
    bn_momentum_max: float = 0.9
    dropout: tuple[float, ...] = (-0.10, -0.05, -0.05, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05, 0.10)
    fc_features: tuple[int, ...] = (-230, -206, -160, -128, -86, -62, -34, -18, 0, 0, 18, 34, 62, 86)
    leaky_slope: tuple[float, ...] = (0.005, 0.008, 0.010, 0.013, 0.018, 0.028)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                if not value:
                    raise SearchError(f"perturbation table {f.name} is empty")
                kind = int if f.name in ("conv_channels", "fc_features") else float
                object.__setattr__(self, f.name, tuple(kind(v) for v in value))
            else:
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "PerturbTable":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SearchError(f"unknown perturbation keys {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance((v := getattr(self, f.name)), tuple) else v) for f in fields(self)}


PERTURB = PerturbTable()


def perturb(vector: Vector, rng: np.random.Generator, table: PerturbTable = PERTURB, scale: float = 1.0) -> Vector:
    """A stage-3 neighbour of ``vector``. ``scale`` multiplies the channel and FC
    deltas (the demo recipe's scaled-down networks); 1.0 is the study."""
    a = vector.arch
    coc = tuple(max(1, c + int(round(_pick(rng, table.conv_channels) * scale))) for c in a.conv_channels)
    lo, hi = table.bn_momentum_min, table.bn_momentum_max
    deltas = table.bn_momentum_low if a.bn_momentum <= lo + 1e-9 else table.bn_momentum
    bnm = round(min(hi, max(lo, a.bn_momentum + _pick(rng, deltas))), 6)
    dp = round(min(0.9, max(0.0, a.dropout + _pick(rng, table.dropout))), 6)
    fc = tuple(max(1, f + int(round(_pick(rng, table.fc_features) * scale))) for f in a.fc_features)
    slope = float(_pick(rng, table.leaky_slope))  # drawn for every CNN: one random stream
    arch = a.with_(conv_channels=coc, bn_momentum=bnm, dropout=dp, fc_features=fc, leaky_slope=slope if a.cnn == "charma" else a.leaky_slope)
    return Vector(arch, vector.batch_size, vector.lr, vector.feature, vector.size, origin=f"perturbed {vector.id}")


def perturbations(parent: Vector, n: int, seed: int, table: PerturbTable = PERTURB, scale: float = 1.0, exclude: Iterable[str] = ()) -> list[Vector]:
    """``n`` distinct perturbations of ``parent`` (none equal to it or to ``exclude``),
    from a generator seeded by (seed, the parent's id)."""
    rng = np.random.default_rng([int(seed), int(parent.id, 16)])
    seen = {parent.id, *exclude}
    out: list[Vector] = []
    for _ in range(100 * max(1, n)):
        if len(out) == n:
            break
        child = perturb(parent, rng, table, scale)
        if child.id not in seen:
            seen.add(child.id)
            out.append(child)
    return out


# =========================================================================== scoring


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _f(value: Any) -> float:
    return math.nan if value is None or value == "" else float(value)


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
            values[name] = _f(values.get(name))
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
        return result_row(self)

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


def _vector_params(vector: Vector) -> dict[str, Any]:
    row = vector_columns(vector)
    return {k: v for k, v in row.items()}


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

    Per fold: a :class:`ser.stopping.FoldStopper` (rules A and B; A abandons the
    vector); across folds a :class:`ser.stopping.VectorStopping` (a B stop at epoch
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
        if old != _jsonable(context):
            changed = sorted(k for k in set(old) | set(context) if old.get(k) != _jsonable(context).get(k))
            raise SearchError(
                f"{vdir} holds results of vector {vector.id} under other settings (changed: {', '.join(changed)}); "
                "use another workdir or delete that folder"
            )
    else:
        _write_json(ctx_path, context)

    vs = stopping.VectorStopping(rules)
    result = VectorResult(vector, [], int(folds), rules=_rules_name(rules), stage=stage)
    params = _vector_params(vector)
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
                    _write_json(path, fold.to_dict())
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
    _write_json(vdir / f"fold{k}.json", fold.to_dict())
    return fold


def _rules_name(rules: stopping.Rules) -> str:
    """A short name: a preset's name, or "A:<preset>|A:custom|no A, B|no B, <C id>|no C"."""
    for name, preset in stopping.PRESETS.items():
        if replace(preset, max_epochs=rules.max_epochs) == rules:
            return name
    a = next((f"A:{n}" for n, p in stopping.PRESETS.items() if p.a and p.a == rules.a), "A:custom" if rules.a else "no A")
    return ", ".join((a, "B" if rules.b else "no B", rules.c_id or "C" if rules.c else "no C"))


# =========================================================================== ranking table

#: The ranking table's columns (CSV). Scores are fractions; "epochs" is the mean
#: number of epochs the folds ran ("epochs needed"), "fold_epochs" each fold's.
COLUMNS: tuple[str, ...] = (
    "rank", "id", "stage", "origin", "cnn", "feature", "N",
    "COC1", "COC2", "COC3", "CKS1", "CKS2", "CKS3", "PKS1", "PKS2", "PKS3", "PS1", "PS2", "PS3",
    "BNM", "DP", "FCOC1", "FCOC2", "slope", "classes", "batch", "LR",
    "seconds", "epochs", "fold_epochs", "best_epoch", "folds",
    "train_loss", "train_loss_std", "val_loss", "val_loss_std",
    "accuracy", "accuracy_std", "macro_f1", "macro_f1_std",
    "stopped_by", "abandoned", "qualified", "rules",
)
_INT_COLUMNS = {"rank", "stage", "N", "COC1", "COC2", "COC3", "CKS1", "CKS2", "CKS3", "PKS1", "PKS2", "PKS3", "PS1", "PS2", "PS3",
                "FCOC1", "FCOC2", "classes", "batch", "folds"}
_FLOAT_COLUMNS = {"BNM", "DP", "slope", "LR", "seconds", "epochs", "best_epoch", "train_loss", "train_loss_std", "val_loss", "val_loss_std",
                  "accuracy", "accuracy_std", "macro_f1", "macro_f1_std"}
_BOOL_COLUMNS = {"abandoned", "qualified"}


def vector_columns(vector: Vector) -> dict[str, Any]:
    a = vector.arch
    row: dict[str, Any] = {"id": vector.id, "origin": vector.origin, "cnn": a.cnn, "feature": vector.feature, "N": vector.size}
    for name, values in (("COC", a.conv_channels), ("CKS", a.conv_kernels), ("PKS", a.pool_kernels), ("PS", a.pool_strides)):
        row.update({f"{name}{i + 1}": v for i, v in enumerate(values)})
    row.update({"BNM": a.bn_momentum, "DP": a.dropout, "FCOC1": a.fc_features[0], "FCOC2": a.fc_features[1], "slope": a.leaky_slope,
                "classes": a.n_classes, "batch": vector.batch_size, "LR": vector.lr})
    return row


def result_row(result: VectorResult) -> dict[str, Any]:
    row = vector_columns(result.vector)
    row["stage"] = result.stage
    s = result.summary()
    row.update({k: s[k] for k in ("train_loss", "train_loss_std", "val_loss", "val_loss_std", "accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "seconds", "epochs", "folds")})
    row["fold_epochs"] = " ".join(str(f.epochs) for f in result.folds)
    row["best_epoch"] = _mean_std([float(f.best_epoch) for f in result.folds])[0]
    row.update({"stopped_by": result.stopped_by, "abandoned": result.abandoned, "qualified": result.qualified, "rules": result.rules})
    return row


def vector_from_row(row: Mapping[str, Any]) -> Vector:
    """The vector a ranking row describes (the inverse of :func:`vector_columns`)."""
    arch = ArchSpec(
        cnn=str(row["cnn"]), in_size=int(row["N"]), n_classes=int(row.get("classes") or 7),
        conv_channels=tuple(int(row[f"COC{i}"]) for i in (1, 2, 3)),
        conv_kernels=tuple(int(row[f"CKS{i}"]) for i in (1, 2, 3)),
        pool_kernels=tuple(int(row[f"PKS{i}"]) for i in (1, 2, 3)),
        pool_strides=tuple(int(row[f"PS{i}"]) for i in (1, 2, 3)),
        bn_momentum=float(row["BNM"]), dropout=float(row["DP"]),
        fc_features=(int(row["FCOC1"]), int(row["FCOC2"])), leaky_slope=float(row["slope"]),
    )
    vector = Vector(arch, int(row["batch"]), float(row["LR"]), str(row["feature"]), int(row["N"]), origin=str(row.get("origin") or ""))
    if row.get("id") and row["id"] != vector.id:
        raise SearchError(f"ranking row {row['id']} does not rebuild to the same vector (got {vector.id}): was the table edited?")
    return vector


def _rank_key(row: Mapping[str, Any]) -> tuple:
    f1, acc = _f(row.get("macro_f1")), _f(row.get("accuracy"))
    return (bool(row.get("abandoned")), not bool(row.get("qualified")), -(f1 if not math.isnan(f1) else -1.0), -(acc if not math.isnan(acc) else -1.0), str(row.get("id")))


def sort_ranking(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows ordered as the study listed them: vectors above the thresholds first,
    then the rest, abandoned vectors last; by macro F1, then accuracy. One row per id
    (the better one)."""
    out, seen = [], set()
    for row in sorted((dict(r) for r in rows), key=_rank_key):
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        row["rank"] = len(out) + 1
        out.append(row)
    return out


def best(ranking: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, Any]]:
    """The ``k`` best rows (the ranking's order: qualified, then by macro F1;
    abandoned vectors only when nothing else is left)."""
    return sort_ranking(ranking)[: max(0, int(k))]


_EXACT_COLUMNS = {"BNM", "DP", "slope", "LR"}  # define the vector: written exactly, so ids rebuild


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value) if column in _EXACT_COLUMNS else f"{value:.6g}"
    return str(value)


def ranking_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c), c) for c in COLUMNS})
    return buf.getvalue()


def _runs(text: str) -> str:
    """"cap cap cap B1" -> "cap ×3, B1" (Markdown only; the CSV keeps every fold)."""
    parts: list[list] = []
    for item in text.split():
        if parts and parts[-1][0] == item:
            parts[-1][1] += 1
        else:
            parts.append([item, 1])
    return ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in parts)


def _pct(mean: Any, std: Any) -> str:
    m, s = _f(mean), _f(std)
    if math.isnan(m):
        return "-"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if not math.isnan(s) else f"{100 * m:.1f}"


def ranking_markdown(rows: Sequence[Mapping[str, Any]], title: str | None = None, notes: Sequence[str] = ()) -> str:
    """The study's Table 2: ID, CNN, feature, N, every secondary parameter, batch,
    LR, time, epochs needed, macro F1 and accuracy (mean ± std over folds, %)."""
    head = ["#", "ID", "CNN", "Feature", "N", "COC", "CKS", "PKS", "PS", "BNM", "DP", "FCOC", "Slope", "Batch", "LR",
            "Time (s)", "Epochs", "Val loss", "Macro F1 %", "Accuracy %", "Stopped by", "Listed"]
    lines = [f"# {title}", ""] if title else []
    lines += [*notes, ""] if notes else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h not in ("ID", "CNN", "Feature", "Stopped by", "Listed") else "---" for h in head) + "|"]
    for r in rows:
        cnn = str(r.get("cnn"))
        cells = [
            r.get("rank", ""), f"`{r.get('id')}`", models.DISPLAY.get(cnn, cnn), r.get("feature"), r.get("N"),
            " ".join(str(r.get(f"COC{i}")) for i in (1, 2, 3)),
            " ".join(str(r.get(f"CKS{i}")) for i in (1, 2, 3)),
            " ".join(str(r.get(f"PKS{i}")) for i in (1, 2, 3)),
            " ".join(str(r.get(f"PS{i}")) for i in (1, 2, 3)),
            f"{_f(r.get('BNM')):.2g}",
            f"{_f(r.get('DP')):.2f}" if cnn != "bulba" else "-",
            f"{r.get('FCOC1')} {r.get('FCOC2')} {r.get('classes')}",
            f"{_f(r.get('slope')):.3g}" if cnn == "charma" else "-",
            r.get("batch"), f"{_f(r.get('LR')):.3g}",
            f"{_f(r.get('seconds')):.0f}", str(r.get("fold_epochs") or ""),
            f"{_f(r.get('val_loss')):.3f}" if not math.isnan(_f(r.get("val_loss"))) else "-",
            _pct(r.get("macro_f1"), r.get("macro_f1_std")), _pct(r.get("accuracy"), r.get("accuracy_std")),
            _runs(str(r.get("stopped_by") or "")) + (" (abandoned)" if r.get("abandoned") else ""),
            "yes" if r.get("qualified") else "",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_ranking(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str | None = None, notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """``out_dir/ranking.csv`` and ``out_dir/ranking.md`` (atomic writes)."""
    out_dir = Path(out_dir)
    rows = sort_ranking(rows)
    return (_write_text(out_dir / "ranking.csv", ranking_csv(rows)), _write_text(out_dir / "ranking.md", ranking_markdown(rows, title, notes)))


def _parse_cell(name: str, text: str) -> Any:
    if text == "" or text is None:
        return None if name not in _FLOAT_COLUMNS else math.nan
    if name in _INT_COLUMNS:
        return int(float(text))
    if name in _FLOAT_COLUMNS:
        return float(text)
    if name in _BOOL_COLUMNS:
        return text.strip().lower() in ("yes", "true", "1")
    return text


def load_ranking(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``ranking.csv`` with typed values (checks every vector rebuilds)."""
    path = Path(path)
    if path.is_dir():
        path = path / "ranking.csv"
    if not path.is_file():
        raise SearchError(f"ranking {path} does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"id", "cnn", "feature", "N", "COC1", "batch", "LR", "macro_f1"} - set(reader.fieldnames or ())
        if missing:
            raise SearchError(f"{path} is not a ranking table (missing columns {sorted(missing)})")
        rows = [{k: _parse_cell(k, v) for k, v in row.items()} for row in reader]
    for row in rows:
        vector_from_row(row)
    return rows


# =========================================================================== recipe


@dataclass(frozen=True)
class Combination:
    """One (CNN, feature, size) cell of a random stage and its number of vectors."""

    cnn: str
    feature: str
    size: int
    vectors: int
    leaky_slope: float | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.feature, self.size)

    def label(self) -> str:
        slope = f" slope {self.leaky_slope:g}" if self.leaky_slope is not None else ""
        return f"{models.DISPLAY[self.cnn]} {self.feature} {self.size}x{self.size}{slope}"


STAGE_KINDS = ("random", "perturb", "final")


def _fraction(value: Any) -> float:
    value = float(value)
    return value / 100.0 if value > 1.0 else value


def _listify(value: Any) -> tuple | None:
    if value is None or value == "any" or value == "all":
        return None
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@dataclass(frozen=True)
class StageConfig:
    """One qualification stage of the recipe.

    kind "random": ``vectors`` new vectors per (CNN, feature, size) in
    cnns x features x sizes (None: every feature kind / size given), with
    ``overrides`` (other counts for some combinations) and ``extras`` (added
    combinations, e.g. CharmaNET with other LeakyReLU slopes); ``merge`` joins the
    results to the previous ranking.
    kind "perturb": ``vectors`` perturbations around each of the ``take`` best of the
    previous ranking, merged with it.
    kind "final": the ``take`` best of the previous ranking scored again (usually
    without early stopping, ``rules: none``, for ``epochs`` epochs); the best is the winner.
    ``thresholds``: (macro F1, accuracy) a vector must reach to be listed.
    """

    number: int
    kind: str
    rules: stopping.Rules
    epochs: int | None = None
    vectors: int = 10
    cnns: tuple[str, ...] = CNNS
    features: tuple[str, ...] | None = ("mel", "chroma", "mfcc")
    sizes: tuple[int, ...] | None = (30, 50, 60, 80)
    overrides: tuple[dict, ...] = ()
    extras: tuple[dict, ...] = ()
    thresholds: tuple[float, float] = (0.60, 0.60)
    take: int = 3
    merge: bool = False
    stream: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise SearchError(f"stage {self.number}: kind must be one of {STAGE_KINDS}, got {self.kind!r}")
        bad = [c for c in self.cnns if c not in CNNS]
        if bad:
            raise SearchError(f"stage {self.number}: unknown CNNs {bad}; expected {CNNS}")
        if not self.stream:
            object.__setattr__(self, "stream", int(self.number))

    @property
    def max_epochs(self) -> int:
        return int(self.epochs) if self.epochs else self.rules.max_epochs

    @classmethod
    def from_dict(cls, number: int, data: Mapping[str, Any]) -> "StageConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)} - {"number"}
        unknown = set(data) - known
        if unknown:
            raise SearchError(f"stage {number}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        try:
            rules = stopping.Rules.from_dict(data.pop("rules", "stage1"))
        except (ValueError, TypeError) as exc:
            raise SearchError(f"stage {number}: bad rules: {exc}") from None
        values: dict[str, Any] = {"number": int(number), "rules": rules, "kind": str(data.pop("kind", "random"))}
        if "epochs" in data:
            values["epochs"] = None if data["epochs"] is None else int(data.pop("epochs"))
            data.pop("epochs", None)
        for name in ("vectors", "take", "stream"):
            if name in data:
                values[name] = int(data.pop(name))
        if "cnns" in data:
            values["cnns"] = tuple(str(c) for c in _listify(data.pop("cnns")) or CNNS)
        if "features" in data:
            f = _listify(data.pop("features"))
            values["features"] = None if f is None else tuple(str(x) for x in f)
        if "sizes" in data:
            s = _listify(data.pop("sizes"))
            values["sizes"] = None if s is None else tuple(int(x) for x in s)
        for name in ("overrides", "extras"):
            if name in data:
                values[name] = tuple(dict(x) for x in (data.pop(name) or ()))
        if "thresholds" in data:
            t = data.pop("thresholds")
            if isinstance(t, Mapping):
                t = (t.get("macro_f1", 0.6), t.get("accuracy", 0.6))
            values["thresholds"] = (_fraction(t[0]), _fraction(t[1]))
        if "merge" in data:
            values["merge"] = bool(data.pop("merge"))
        if "description" in data:
            values["description"] = str(data.pop("description"))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "rules": self.rules.to_dict(), "epochs": self.epochs, "vectors": self.vectors,
            "cnns": list(self.cnns), "features": None if self.features is None else list(self.features),
            "sizes": None if self.sizes is None else list(self.sizes), "overrides": [dict(o) for o in self.overrides],
            "extras": [dict(e) for e in self.extras], "thresholds": list(self.thresholds), "take": self.take,
            "merge": self.merge, "stream": self.stream, "description": self.description,
        }

    def with_trials(self, k: int) -> "StageConfig":
        """Every per-combination (or per-parent) count set to ``k``."""
        return replace(
            self,
            vectors=int(k),
            overrides=tuple({**o, "vectors": int(k)} for o in self.overrides),
            extras=tuple({**e, "vectors": int(k)} for e in self.extras),
        )

    def combinations(self, available: Iterable[tuple[str, int]]) -> tuple[list[Combination], list[Combination]]:
        """(combinations that have a feature set, combinations skipped for want of one)."""
        available = list(dict.fromkeys((str(k), int(s)) for k, s in available))
        kinds = self.features if self.features is not None else tuple(dict.fromkeys(k for k, _ in available))
        sizes = self.sizes if self.sizes is not None else tuple(sorted({s for _, s in available}))
        combos: list[Combination] = []
        for cnn in self.cnns:
            for kind in kinds:
                for size in sizes:
                    n = self.vectors
                    for o in self.overrides:
                        if _matches(o, cnn, kind, size):
                            n = int(o.get("vectors", n))
                    combos.append(Combination(cnn, kind, int(size), n))
        for extra in self.extras:
            unknown = set(extra) - {"cnn", "cnns", "feature", "features", "size", "sizes", "leaky_slope", "leaky_slopes", "vectors"}
            if unknown:
                raise SearchError(f"stage {self.number}: unknown extra keys {sorted(unknown)}")
            for cnn in _listify(extra.get("cnns", extra.get("cnn"))) or self.cnns:
                for kind in _listify(extra.get("features", extra.get("feature"))) or kinds:
                    for size in _listify(extra.get("sizes", extra.get("size"))) or sizes:
                        for slope in _listify(extra.get("leaky_slopes", extra.get("leaky_slope"))) or (None,):
                            combos.append(Combination(str(cnn), str(kind), int(size), int(extra.get("vectors", self.vectors)),
                                                      None if slope is None else float(slope)))
        have = set(available)
        return [c for c in combos if c.key in have and c.vectors > 0], [c for c in combos if c.key not in have and c.vectors > 0]


def _matches(rule: Mapping[str, Any], cnn: str, kind: str, size: int) -> bool:
    for key, value in (("cnn", cnn), ("feature", kind), ("size", size)):
        want = rule.get(key)
        if want is not None and str(want) != str(value):
            return False
    return True


@dataclass(frozen=True)
class Recipe:
    """The whole search as data: grids, perturbations, protocol, stages."""

    name: str
    stages: dict[int, StageConfig]
    space: SearchSpace = field(default_factory=SearchSpace)
    perturbation: PerturbTable = field(default_factory=PerturbTable)
    scale: float = 1.0
    seed: int = 0
    folds: int = 5
    split: str = "random"
    test_size: float = 0.2
    score_at: str = "last"
    eval_every: int = 1
    checkpoint_every: int = 1
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.split not in splits.PROTOCOLS:
            raise SearchError(f"split must be one of {splits.PROTOCOLS}, got {self.split!r}")
        if self.score_at not in ("last", "best"):
            raise SearchError(f"score_at must be 'last' or 'best', got {self.score_at!r}")
        if int(self.folds) < 2:
            raise SearchError("folds must be at least 2")
        if not 0 < float(self.scale):
            raise SearchError("scale must be positive")

    @property
    def grid(self) -> SearchSpace:
        """The search space with ``scale`` applied to channels and FC features."""
        return self.space.scaled(self.scale)

    def stage(self, number: int) -> StageConfig:
        try:
            return self.stages[int(number)]
        except KeyError:
            raise SearchError(f"recipe {self.name} has no stage {number} (it has {sorted(self.stages)})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "seed": self.seed, "folds": self.folds,
            "split": self.split, "test_size": self.test_size, "score_at": self.score_at, "eval_every": self.eval_every,
            "checkpoint_every": self.checkpoint_every, "scale": self.scale, "space": self.space.to_dict(), "perturbation": self.perturbation.to_dict(),
            "stages": {n: s.to_dict() for n, s in sorted(self.stages.items())},
        }

    def hash(self) -> str:
        blob = json.dumps(_jsonable(self.to_dict()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> "Recipe":
        data = dict(data)
        known = {"name", "description", "seed", "folds", "split", "test_size", "score_at", "eval_every", "checkpoint_every", "scale", "space", "perturbation", "stages"}
        unknown = set(data) - known
        if unknown:
            raise SearchError(f"recipe {source or data.get('name')}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        raw = data.get("stages") or {}
        if not isinstance(raw, Mapping) or not raw:
            raise SearchError("a recipe needs a 'stages' mapping (1: {...}, 2: {...})")
        stages = {}
        for key, value in raw.items():
            number = int(str(key).lower().removeprefix("stage"))
            stages[number] = StageConfig.from_dict(number, value or {})
        return cls(
            name=str(data.get("name") or Path(source).stem or "recipe"),
            stages=stages,
            space=SearchSpace.from_dict(data.get("space")),
            perturbation=PerturbTable.from_dict(data.get("perturbation")),
            scale=float(data.get("scale", 1.0)),
            seed=int(data.get("seed", 0)),
            folds=int(data.get("folds", 5)),
            split=str(data.get("split", "random")),
            test_size=float(data.get("test_size", 0.2)),
            score_at=str(data.get("score_at", "last")),
            eval_every=int(data.get("eval_every", 1)),
            checkpoint_every=int(data.get("checkpoint_every", 1)),
            description=str(data.get("description") or ""),
            source=source,
        )

    def with_overrides(self, *, trials: int | None = None, folds: int | None = None, epochs: int | None = None,
                       seed: int | None = None, split: str | None = None, test_size: float | None = None) -> "Recipe":
        """Command-line overrides: ``trials`` vectors per combination (and per parent in
        stage 3), ``epochs`` the maximum (stage 4: the fixed) epochs of every stage."""
        stages = dict(self.stages)
        if trials is not None:
            if trials < 1:
                raise SearchError("trials must be at least 1")
            stages = {n: (s.with_trials(trials) if s.kind != "final" else s) for n, s in stages.items()}
        if epochs is not None:
            if epochs < 1:
                raise SearchError("epochs must be at least 1")
            stages = {n: replace(s, epochs=int(epochs)) for n, s in stages.items()}
        changes: dict[str, Any] = {"stages": stages}
        for name, value in (("folds", folds), ("seed", seed), ("split", split), ("test_size", test_size)):
            if value is not None:
                changes[name] = value
        return replace(self, **changes)


#: Recipes shipped with the package (``ser/recipes/<name>.yaml``).
BUILTIN_RECIPES: tuple[str, ...] = ("study", "demo")


def recipe_text(name: str) -> str:
    """The YAML text of a shipped recipe (copy it to edit)."""
    return resources.files("ser").joinpath("recipes", f"{name}.yaml").read_text(encoding="utf-8")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name ("study", "demo") or a YAML/JSON file."""
    import yaml

    text_name = str(name_or_path)
    if text_name in BUILTIN_RECIPES:
        text, source = recipe_text(text_name), f"ser/recipes/{text_name}.yaml"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SearchError(f"recipe {path} does not exist (shipped recipes: {', '.join(BUILTIN_RECIPES)})")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SearchError(f"recipe {source} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise SearchError(f"recipe {source} must hold a mapping")
    return Recipe.from_dict(data, source=source)


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
        fs = feature_sets[key]
        groups = np.unique(fs.group)
        train = splits.training_rows(fs, groups[~np.isin(groups, list(test_sources))])
        out[key] = train
        sizes[f"{key[0]}-{key[1]}"] = {"train_rows": int(train.size), "held_out_rows": int(len(fs) - train.size)}
    desc = {"protocol": protocol, "seed": int(seed), "test_size": float(test_size), "reference": f"{keys[0][0]}-{keys[0][1]}",
            "test_sources": len(test_sources), "rows": sizes,
            "note": "the search sees only the training side; the test side is for the final model"}
    return out, desc


def _qualify(result: VectorResult, thresholds: tuple[float, float]) -> bool:
    f1, acc = result.macro_f1, result.accuracy
    return result.complete and not math.isnan(f1) and f1 >= thresholds[0] and acc >= thresholds[1]


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

    ``tracker`` (optional; e.g. :class:`ser.tracking.Tracker`): an object with
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
    log(f"stage {st.number} ({st.kind}): {len(vectors)} vectors, {recipe.folds}-fold CV, up to {st.max_epochs} epochs, rules {_rules_name(st.rules)}")
    results: list[VectorResult] = []
    stage_dir = Path(workdir) / f"stage{st.number}"
    bar = tqdm(vectors, desc=f"stage {st.number} vectors", unit="vector", disable=not progress, dynamic_ncols=True)
    stage_params = {"recipe": recipe.name, "recipe_hash": recipe.hash(), "stage": st.number, "kind": st.kind, "vectors": len(vectors),
                    "folds": recipe.folds, "max_epochs": st.max_epochs, "rules": _rules_name(st.rules), "split": recipe.split,
                    "seed": recipe.seed}
    with _tracker_run(tracker, f"stage {st.number}", "stage", stage_params, {"stage": st.number}):
        for vector in bar:
            fs = feature_sets[vector.key]
            idx = None if train_idx is None else train_idx[vector.key]
            result = score_vector(vector, fs, idx, st.rules, folds=recipe.folds, seed=recipe.seed, epochs=st.max_epochs,
                                  workdir=stage_dir, device=device, tracker=tracker, protocol=recipe.split, score_at=recipe.score_at,
                                  eval_every=recipe.eval_every, checkpoint_every=recipe.checkpoint_every, progress=progress,
                                  stage=st.number)
            result.qualified = _qualify(result, st.thresholds)
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
                                 **({"best_macro_f1": top["macro_f1"]} if not math.isnan(_f(top.get("macro_f1"))) else {})}, st.number)
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
    title = f"Ranking after stage {st.number}"
    paths: dict[str, Path] = {}
    paths["csv"], paths["md"] = write_ranking(result.ranking, sdir, title, notes)
    write_ranking(result.ranking, out_dir, title, notes)
    stage_meta = {**meta, "stage": st.to_dict() | {"number": st.number}, "skipped": result.skipped,
                  "results": [r.to_dict() for r in result.results]}
    paths["results"] = _write_json(sdir / "results.json", stage_meta)
    if result.winner is not None:
        row = result.winner
        v = vector_from_row(row)
        paths["winner"] = _write_json(out_dir / "winner.json", winner_config(row))
        spec = (feature_specs or {}).get(v.key)
        paths["winner_meta"] = _write_json(out_dir / "winner_meta.json", {
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
    _write_json(out / "search.json", {**meta, "stages": numbers})
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
