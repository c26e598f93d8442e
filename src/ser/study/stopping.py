"""Early-stopping rules A, B and C of the study (METHOD.md section 6), as data.

- A (hopeless model): at fixed epochs, if the validation macro F1 is under a
  threshold, the whole parameter vector is abandoned (scope ``"vector"``).
- B (overfitting): B1, B2 and B3 stop the current fold (scope ``"fold"``); after B
  stops a fold at epoch e, later folds of the same vector run at most e epochs.
- C (weak fold): after a whole fold, abandon the vector if both its F1 and its
  accuracy are under the thresholds.

Conventions: epochs are 1-based (the first epoch is epoch 1); F1 and accuracy are
fractions in 0..1 (a threshold written above 1, e.g. ``42``, is read as percent);
rule decisions are pure functions of the history, so a fold resumed from a
checkpoint decides exactly as an uninterrupted one.

Validation every epoch is what the study did. With ``eval_every > 1`` an A rule is
checked at the first evaluated epoch at or after its epoch; B rules need validation
at every epoch they look at (multiples of 4, resp. 40), otherwise they do not fire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, Sequence

Scope = Literal["vector", "fold"]

#: Rule C thresholds (min F1, min accuracy) by name.
C_RULES: dict[str, tuple[float, float]] = {"C1": (0.45, 0.42), "C2": (0.50, 0.50), "C3": (0.60, 0.60)}

# B rule parameters (METHOD.md section 6).
B12_MIN_EPOCH, B12_STEP, B12_STEPS = 50, 4, 4
B2_MIN_CHANGE = 0.010  # 1.0 point of F1
B3_MIN_EPOCH, B3_STEP, B3_MIN_GAIN = 110, 40, 0.012  # 1.2 points over 40 epochs


class _Record(Protocol):  # what the rules read from a history entry (training.EpochRecord)
    epoch: int
    val_loss: float
    macro_f1: float
    accuracy: float


@dataclass(frozen=True)
class ARule:
    """Abandon the vector if validation F1 < ``min_f1`` at ``epoch``."""

    epoch: int
    min_f1: float
    rule_id: str


def _fraction(value: Any) -> float:
    value = float(value)
    if value > 1.0:  # written in percent
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold {value} is not a fraction in 0..1 (or a percent)")
    return value


def _a_rules(items: Any) -> tuple[ARule, ...]:
    rules = []
    for item in items or ():
        if isinstance(item, ARule):
            rules.append(item)
        elif isinstance(item, dict):
            rules.append(ARule(int(float(item["epoch"])), _fraction(item["min_f1"]), str(item.get("rule_id", item.get("rule", "A")))))
        else:
            epoch, min_f1, *rest = item
            rules.append(ARule(int(float(epoch)), _fraction(min_f1), str(rest[0]) if rest else "A"))
    return tuple(sorted(rules, key=lambda r: r.epoch))


@dataclass(frozen=True)
class Rules:
    """One stage's early-stopping rules.

    ``a``: A rules (epoch, min F1, id); ``b``: apply B1-B3; ``c``: (min F1, min
    accuracy) of rule C, or None; ``c_id``: the C rule's name ("C1".. or "C");
    ``max_epochs``: the longest a fold may run.
    """

    a: tuple[ARule, ...] = ()
    b: bool = True
    c: tuple[float, float] | None = None
    max_epochs: int = 300
    c_id: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "a", _a_rules(self.a))
        set_(self, "b", bool(self.b))
        c = self.c
        if isinstance(c, str):
            if c not in C_RULES:
                raise ValueError(f"unknown C rule {c!r}; expected one of {sorted(C_RULES)}")
            set_(self, "c_id", self.c_id or c)
            c = C_RULES[c]
        if c is not None:
            c = (_fraction(c[0]), _fraction(c[1]))
            if not self.c_id:
                named = [name for name, value in C_RULES.items() if all(math.isclose(x, y) for x, y in zip(value, c))]
                set_(self, "c_id", named[0] if named else "C")
        set_(self, "c", c)
        set_(self, "max_epochs", int(float(self.max_epochs)))
        if self.max_epochs < 1:
            raise ValueError("max_epochs must be at least 1")

    def with_c(self, c: str | tuple[float, float] | None) -> "Rules":
        """The same rules with another C rule ("C1", "C2", "C3", a pair, or None)."""
        return replace(self, c=c, c_id="")

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": [[r.epoch, r.min_f1, r.rule_id] for r in self.a],
            "b": self.b,
            "c": list(self.c) if self.c else None,
            "c_id": self.c_id,
            "max_epochs": self.max_epochs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> "Rules":
        """Rules from a dict (recipe YAML) or a preset name ("stage1", "stage2", "none").

        ``a`` may be a list of ``[epoch, min_f1, id]`` or of dicts with those keys; a
        ``preset`` key starts from a preset and the other keys override it.
        """
        if isinstance(data, str):
            return preset(data)
        data = dict(data)
        base = preset(data.pop("preset")).to_dict() if "preset" in data else {}
        known = {"a", "b", "c", "c_id", "max_epochs"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown early-stopping keys: {sorted(unknown)}")
        if "c" in data and "c_id" not in data:
            base.pop("c_id", None)
        base.update(data)
        return cls(**base)


def _stage(thresholds: Sequence[float], c: str) -> Rules:
    epochs = (20, 50, 75, 100, 125, 150, 200, 250)
    ids = ("A1", "A2", "A3", "A4", "A4", "A5", "A6", "A7")
    per_rule = list(thresholds[:4]) + [thresholds[3]] + list(thresholds[4:])  # A4 at 100 and 125
    return Rules(a=tuple(ARule(e, t / 100.0, i) for e, t, i in zip(epochs, per_rule, ids)), b=True, c=c)


#: Stage 1 thresholds 17 20 24 27 36 39 42% and C1 (the study began with C1 and moved up).
STAGE1 = _stage((17, 20, 24, 27, 36, 39, 42), "C1")
#: Stage 2 thresholds 42 45 48 51 54 56 58% and C3.
STAGE2 = _stage((42, 45, 48, 51, 54, 56, 58), "C3")
#: No early stopping at all (stage 4, final training).
NONE = Rules(a=(), b=False, c=None)
PRESETS: dict[str, Rules] = {"stage1": STAGE1, "stage2": STAGE2, "none": NONE}


def rules_name(rules: Rules) -> str:
    """A stage's rules in a few words, the same in rankings, logs and the pipeline's
    recipe table: a preset's name when they equal one (whatever the epoch cap), else
    "A:<preset>|A:custom|no A, B|no B, <C id>|C|no C"."""
    for name, known in PRESETS.items():
        if replace(known, max_epochs=rules.max_epochs) == rules:
            return name
    a = next((f"A:{n}" for n, p in PRESETS.items() if p.a and p.a == rules.a), "A:custom" if rules.a else "no A")
    return ", ".join((a, "B" if rules.b else "no B", (rules.c_id or "C") if rules.c else "no C"))


def preset(name: str) -> Rules:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown early-stopping preset {name!r}; expected one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class StopDecision:
    """Why training stops: ``rule`` ("A1".., "B1".., "cap", "max_epochs") and its scope."""

    rule: str
    scope: Scope


def _evaluated(rec: _Record) -> bool:
    return not (math.isnan(rec.val_loss) or math.isnan(rec.macro_f1))


def check_a(rules: Rules, history: Sequence[_Record]) -> StopDecision | None:
    """A rules on the last record: each rule is checked once, at the first evaluated
    epoch at or after its epoch."""
    if not history or not _evaluated(history[-1]):
        return None
    last = history[-1]
    previous = max((r.epoch for r in history[:-1] if _evaluated(r)), default=0)
    for rule in rules.a:
        if previous < rule.epoch <= last.epoch and last.macro_f1 < rule.min_f1:
            return StopDecision(rule.rule_id, "vector")
    return None


def _at(history: Sequence[_Record], epochs: Sequence[int]) -> list[_Record] | None:
    by_epoch = {r.epoch: r for r in history}
    found = [by_epoch.get(e) for e in epochs]
    if any(r is None or not _evaluated(r) for r in found):
        return None
    return found  # type: ignore[return-value]


def check_b(history: Sequence[_Record]) -> StopDecision | None:
    """B1, B2, B3 on the last record (METHOD.md section 6)."""
    if not history:
        return None
    e = history[-1].epoch
    if e > B12_MIN_EPOCH and e % B12_STEP == 0:
        recs = _at(history, [e - B12_STEP * i for i in range(B12_STEPS, -1, -1)])  # e-16 .. e
        if recs is not None:
            steps = list(zip(recs[:-1], recs[1:]))
            if all(b.val_loss > a.val_loss for a, b in steps):
                return StopDecision("B1", "fold")
            if all(abs(b.macro_f1 - a.macro_f1) < B2_MIN_CHANGE for a, b in steps):
                return StopDecision("B2", "fold")
    if e > B3_MIN_EPOCH and e % B3_STEP == 0:
        recs = _at(history, [e - B3_STEP, e])
        if recs is not None and recs[1].macro_f1 - recs[0].macro_f1 < B3_MIN_GAIN:
            return StopDecision("B3", "fold")
    return None


class FoldStopper:
    """Called after every epoch with the history so far; says whether to stop.

    ``max_epochs`` is the fold's cap (``rules.max_epochs`` or the epoch at which B
    stopped an earlier fold of the same vector).
    """

    def __init__(self, rules: Rules, max_epochs: int | None = None, on_stop: "Any" = None) -> None:
        self.rules = rules
        self.max_epochs = int(max_epochs) if max_epochs is not None else rules.max_epochs
        self.decision: StopDecision | None = None
        self.stopped_at: int | None = None
        self._on_stop = on_stop

    def __call__(self, history: Sequence[_Record]) -> StopDecision | None:
        if not history:
            return None
        decision = check_a(self.rules, history)
        if decision is None and self.rules.b:
            decision = check_b(history)
        epoch = history[-1].epoch
        if decision is None and epoch >= self.max_epochs:
            decision = StopDecision("cap" if self.max_epochs < self.rules.max_epochs else "max_epochs", "fold")
        if decision is not None:
            self.decision, self.stopped_at = decision, epoch
            if self._on_stop is not None:
                self._on_stop(decision, epoch)
        return decision


@dataclass
class VectorStopping:
    """The early-stopping state of one parameter vector across its folds.

    Per fold: ``stopper = vs.fold_stopper()``, ``result = fit(..., stopper=stopper)``,
    then ``vs.after_fold(f1, acc, stopped_by=result.stopped_by, epoch=result.epochs_run)``.
    A B stop at epoch e makes e the cap of later folds: the fold's stopper reports
    it as it happens, and ``after_fold`` reports it when the stopper never saw it
    (a fit resumed from a checkpoint that had already stopped, or a vector replayed
    from stored fold results); each fold's stop is counted once.
    """

    rules: Rules
    cap: int = 0
    events: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cap = int(self.cap) or self.rules.max_epochs
        self._reported = False

    def fold_stopper(self) -> FoldStopper:
        self._reported = False
        return FoldStopper(self.rules, self.cap, on_stop=self._on_stop)

    def _on_stop(self, decision: StopDecision, epoch: int) -> None:
        self._reported = True
        self.record_stop(decision, epoch)

    def record_stop(self, decision: StopDecision | str | None, epoch: int) -> None:
        """Note how a fold ended; a B stop at epoch e makes e the cap of later folds."""
        rule = decision.rule if isinstance(decision, StopDecision) else decision
        if rule is None:
            return
        self.events.append((rule, int(epoch)))
        if rule.startswith("B"):
            self.cap = min(self.cap, int(epoch))

    def after_fold(self, f1: float, acc: float, *, stopped_by: str | None = None, epoch: int | None = None) -> str | None:
        """End of a fold: record its stop if its stopper did not, then rule C: the C
        rule id if the vector is abandoned after this fold, else None."""
        if stopped_by is not None and epoch is not None and not self._reported:
            self.record_stop(stopped_by, epoch)
        self._reported = False
        if self.rules.c is None:
            return None
        min_f1, min_acc = self.rules.c
        if f1 < min_f1 and acc < min_acc:
            self.events.append((self.rules.c_id, -1))
            return self.rules.c_id
        return None
