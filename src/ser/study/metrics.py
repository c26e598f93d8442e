"""Classification scores as the field reports them, from scikit-learn.

- UA, unweighted accuracy: the mean of the per-class recalls over the classes that
  occur in the true labels (scikit-learn's balanced accuracy). It is the headline
  figure of speech emotion recognition because corpora are unbalanced: a model that
  always answers the largest class scores its share in WA but 1/K in UA.
- WA, weighted accuracy: the plain fraction of correct answers.
- Macro F1: the mean per-class F1 over the classes present in the labels or the
  predictions (scikit-learn's default), so a class absent from a fold is not a zero.

Every run reports the three together, and a set of runs (folds, seeds) as mean and
standard deviation (:func:`summarise`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

#: The names of the three scores, in the order every table shows them.
NAMES: tuple[str, ...] = ("ua", "wa", "macro_f1")


@dataclass(frozen=True)
class Scores:
    """UA, WA and macro F1 as fractions (NaN for an empty set)."""

    ua: float
    wa: float
    macro_f1: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """UA, WA and macro F1 of integer predictions."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.size == 0:
        return Scores(math.nan, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        ua = float(balanced_accuracy_score(y_true, y_pred))
    return Scores(ua=ua, wa=float(np.mean(y_true == y_pred)), macro_f1=macro_f1(y_true, y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes present in labels or predictions."""
    if len(y_true) == 0:
        return math.nan
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix over all ``n_classes``: rows true class, columns predicted."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def per_class(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (0 where undefined)."""
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(len(names)), zero_division=0)
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, name in enumerate(names)}


def summarise(runs: Iterable[Scores | Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of each score over runs (folds, seeds),
    NaN runs left out; ``n`` says how many counted."""
    rows = [r.to_dict() if isinstance(r, Scores) else dict(r) for r in runs]
    out: dict[str, dict[str, float]] = {}
    for name in NAMES:
        values = np.array([float(r[name]) for r in rows if r.get(name) is not None and not math.isnan(float(r[name]))])
        out[name] = {
            "mean": float(values.mean()) if values.size else math.nan,
            "std": float(values.std()) if values.size else math.nan,
            "n": int(values.size),
        }
    return out


def format_summary(summary: Mapping[str, Mapping[str, float]]) -> str:
    """'UA 71.2 +- 6.3%, WA ..., macro F1 ...' for logs and notes."""
    label = {"ua": "UA", "wa": "WA", "macro_f1": "macro F1"}
    return ", ".join(f"{label[k]} {100 * summary[k]['mean']:.1f} +- {100 * summary[k]['std']:.1f}%" for k in NAMES if k in summary)
