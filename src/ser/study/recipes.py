"""Recipes: the whole architecture search as data (METHOD.md sections 4-6).

A recipe (``ser/recipes/study.yaml``, ``demo.yaml`` or a copy a user edits) holds
the grids, the perturbation tables, the split protocol, and the four qualification
stages with their budgets, stopping rules and listing thresholds. This module reads
and checks it; :mod:`ser.study.search` runs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from ser.study import models, splits, stopping
from ser.files import jsonable
from ser.study.models import CNNS
from ser.study.search_space import PerturbTable, SearchError, SearchSpace


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
    ``c_schedule``: ((fraction, C rule), ...) moves rule C up as the stage goes on:
    the vector at position i of n uses the rule of the last entry whose fraction is
    <= i / n. The study's stage 1 "began with C1 and moved up" without saying when;
    the study recipe moves at thirds (docs/METHOD_DEVIATIONS.md). Empty: ``rules``'
    own C for every vector.
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
    c_schedule: tuple[tuple[float, str], ...] = ()

    def __post_init__(self) -> None:
        try:
            schedule = tuple((float(at), str(rule)) for at, rule in self.c_schedule)
        except (TypeError, ValueError):
            raise SearchError(f"stage {self.number}: c_schedule must be a list of [fraction, C rule] pairs") from None
        for at, rule in schedule:
            if rule not in stopping.C_RULES or not 0.0 <= at < 1.0:
                raise SearchError(f"stage {self.number}: c_schedule entries are [fraction in [0, 1), one of {sorted(stopping.C_RULES)}], got [{at}, {rule!r}]")
        if schedule and (schedule[0][0] != 0.0 or list(schedule) != sorted(schedule)):
            raise SearchError(f"stage {self.number}: c_schedule must start at 0 and rise, got {[list(e) for e in schedule]}")
        object.__setattr__(self, "c_schedule", schedule)
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

    def rules_at(self, position: int, total: int) -> stopping.Rules:
        """The stopping rules of the stage's vector number ``position`` (0-based) of
        ``total``: ``rules`` with C taken from ``c_schedule`` when there is one."""
        if not self.c_schedule or total <= 0:
            return self.rules
        rule = [r for at, r in self.c_schedule if at <= position / total][-1]
        return self.rules.with_c(rule)

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
        if "c_schedule" in data:
            values["c_schedule"] = tuple(data.pop("c_schedule") or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "rules": self.rules.to_dict(), "epochs": self.epochs, "vectors": self.vectors,
            "cnns": list(self.cnns), "features": None if self.features is None else list(self.features),
            "sizes": None if self.sizes is None else list(self.sizes), "overrides": [dict(o) for o in self.overrides],
            "extras": [dict(e) for e in self.extras], "thresholds": list(self.thresholds), "take": self.take,
            "merge": self.merge, "stream": self.stream, "description": self.description,
            "c_schedule": [[at, rule] for at, rule in self.c_schedule],
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
        blob = json.dumps(jsonable(self.to_dict()), sort_keys=True).encode()
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
