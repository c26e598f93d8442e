"""The study's search space (METHOD.md section 4): the grids of secondary parameters,
parameter vectors and how they are drawn, and stage 3's perturbations.

- :class:`SearchSpace`: the grids of secondary parameters; :func:`sample_vectors`
  draws parameter vectors. Vector ``i`` of a stage is drawn from a generator seeded
  by (seed, stage stream, i) only, so the first ten vectors of every (CNN, feature,
  size) combination share their secondary parameters (the study's design); a vector
  whose pooling chain does not fit an input size is redrawn deterministically
  (attempt 1, 2 ...) and the redraw is recorded in ``Vector.redraws``.
- :func:`perturb`: stage 3, with the study's perturbation tables (:class:`PerturbTable`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ser.study import training
from ser.study.models import CNNS, ArchSpec, SpecError


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


def _grids_from_dict(cls: type, data: Mapping[str, Any] | None, what: str) -> Any:
    """A grid dataclass from a recipe's mapping; a misspelt key is an error, not a default."""
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise SearchError(f"unknown {what} keys {sorted(unknown)}; expected {sorted(known)}")
    return cls(**data)


def _grids_to_dict(grids: Any) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance((v := getattr(grids, f.name)), tuple) else v) for f in fields(grids)}


@dataclass(frozen=True)
class SearchSpace:
    """The grids of secondary parameters (METHOD.md section 4).

    Each conv layer draws its own channels, kernel, pooling kernel and stride; each
    of FC1 and FC2 its own features. ``leaky_slope`` is not drawn: it is CharmaNET's
    slope (0.01 in the study; the stage-1 extras use 0.005 and 0.050).

    ``squirtle_pool_stride``: METHOD.md section 4 fixes SquirtleNET's pooling
    stride at 2 ("avg-pool (pool stride 2)"; the optimal model has PS 2 2 2), while
    BulbaNET and CharmaNET draw theirs from ``pool_strides``. The strides are still
    drawn for SquirtleNET and then replaced, so vector i keeps every other
    parameter it shares with the other CNNs. ``None`` lets SquirtleNET draw them
    too: a departure from the study (docs/METHOD_DEVIATIONS.md).
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
    squirtle_pool_stride: int | None = 2

    _INT = ("conv_channels", "conv_kernels", "pool_kernels", "pool_strides", "fc_features", "batch_size")

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "leaky_slope":
                object.__setattr__(self, f.name, float(self.leaky_slope))
            elif f.name == "squirtle_pool_stride":
                if self.squirtle_pool_stride is not None:
                    if int(self.squirtle_pool_stride) < 1:
                        raise SearchError(f"squirtle_pool_stride must be a positive integer or null, got {self.squirtle_pool_stride}")
                    object.__setattr__(self, f.name, int(self.squirtle_pool_stride))
            else:
                object.__setattr__(self, f.name, _grid(getattr(self, f.name), f.name, int if f.name in self._INT else float))
        if min(self.conv_channels) < 1 or min(self.fc_features) < 1 or min(self.batch_size) < 1:
            raise SearchError("channel, FC feature and batch grids must hold positive numbers")
        if min(self.lr) <= 0:
            raise SearchError("learning rates must be positive")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SearchSpace":
        return _grids_from_dict(cls, data, "search-space")

    def to_dict(self) -> dict[str, Any]:
        return _grids_to_dict(self)

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
            if cnn == "squirtle" and space.squirtle_pool_stride is not None:
                params["pool_strides"] = (space.squirtle_pool_stride,) * 3
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
        return _grids_from_dict(cls, data, "perturbation")

    def to_dict(self) -> dict[str, Any]:
        return _grids_to_dict(self)


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
