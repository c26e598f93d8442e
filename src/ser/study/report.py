"""Results a person can open: metrics.json, learning curves, confusion matrices,
Markdown and CSV tables, and the mean and spread over seeds (METHOD.md section 8).

Plots use matplotlib's Agg backend (no display needed). Every writer creates the
parent folder and returns the path it wrote.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ser.files import jsonable, write_json, write_text

#: Top-level numbers summarised by :func:`summarise_seeds` when present.
SUMMARY_KEYS: tuple[str, ...] = ("accuracy", "macro_f1", "loss", "best_epoch")



def _save(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (creating the folder) and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- metrics


def metrics(evaluation: Any, *, best_epoch: int | None, seed: int | None, split: str | None, **extra: Any) -> dict[str, Any]:
    """The metrics.json dict: accuracy (WA), ua, macro_f1, per_class, confusion_matrix, labels,
    loss, best_epoch, seed, split, plus ``extra`` (config hash, epochs, sizes ...)."""
    data = {
        "accuracy": evaluation.accuracy,
        "ua": getattr(evaluation, "ua", None),
        "macro_f1": evaluation.macro_f1,
        "loss": evaluation.loss,
        "per_class": evaluation.per_class,
        "confusion_matrix": evaluation.confusion,
        "labels": list(evaluation.labels),
        "n": int(len(evaluation.probabilities)),
        "best_epoch": best_epoch,
        "seed": seed,
        "split": split,
    }
    data.update(extra)
    return jsonable(data)


def scalars(metrics: Mapping[str, Any], keys: Sequence[str] = ("accuracy", "ua", "macro_f1", "loss", "best_epoch")) -> dict[str, float]:
    """The plain numbers of a metrics dict (for KFP's Metrics artifact, a published
    version's summary): NaN, None, booleans and missing keys are left out."""
    out = {}
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value)):
            out[key] = float(value)
    return out


def write_metrics(path: str | Path, data: Mapping[str, Any]) -> Path:
    """metrics.json, NaN written as null (strict JSON readers refuse NaN)."""
    return write_json(path, data)


# --------------------------------------------------------------------------- tables


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int | Mapping[str, int] = 4) -> str:
    """A GitHub Markdown table of ``rows`` (dicts); columns default to the first row's
    keys; ``digits`` after the point, one number or per column (default 4)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    places = {c: (digits.get(c, 4) if isinstance(digits, Mapping) else digits) for c in columns}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c), places[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: jsonable(row.get(c)) for c in columns})
    return buf.getvalue()


def write_table(rows: Sequence[Mapping[str, Any]], stem: str | Path, columns: Sequence[str] | None = None, title: str | None = None, digits: int | Mapping[str, int] = 4) -> tuple[Path, Path]:
    """Write ``stem``.md and ``stem``.csv; returns both paths."""
    stem = Path(stem)
    md = (f"# {title}\n\n" if title else "") + markdown_table(rows, columns, digits)
    return write_text(stem.with_suffix(".md"), md), write_text(stem.with_suffix(".csv"), csv_text(rows, columns))


def history_rows(history: Iterable[Any]) -> list[dict[str, Any]]:
    """EpochRecords (or dicts) as plain dict rows."""
    return [dict(r) if isinstance(r, Mapping) else r.to_dict() for r in history]


IMPROVEMENT_COLUMNS = ("epoch", "test_loss", "accuracy", "macro_f1")


def improvement_rows(records: Iterable[Any]) -> list[dict[str, Any]]:
    """The study's Table 5: epoch, test loss, accuracy and F1 (percent) at each improvement."""
    rows = []
    for r in history_rows(records):
        rows.append({"epoch": r["epoch"], "test_loss": r["val_loss"], "accuracy": 100.0 * r["accuracy"], "macro_f1": 100.0 * r["macro_f1"]})
    return rows


def write_improvements(records: Iterable[Any], stem: str | Path) -> tuple[Path, Path]:
    return write_table(improvement_rows(records), stem, IMPROVEMENT_COLUMNS, title="Test-loss improvements (accuracy and macro F1 in %)",
                       digits={"test_loss": 4, "accuracy": 2, "macro_f1": 2})


def per_class_rows(per_class: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"label": name, **dict(values)} for name, values in per_class.items()]


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(history: Iterable[Any], path: str | Path, title: str | None = None, best_epoch: int | None = None, eval_name: str = "validation") -> Path:
    """Train and validation loss per epoch (left) and validation macro F1 and
    accuracy per epoch (right), as a PNG. ``eval_name`` names the evaluated set
    ("test" in final training)."""
    plt = _pyplot()
    rows = history_rows(history)
    epochs = np.array([r["epoch"] for r in rows], dtype=float)
    get = lambda key: np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)  # noqa: E731
    train_loss, val_loss, f1, acc = get("train_loss"), get("val_loss"), get("macro_f1"), get("accuracy")
    evaluated = ~np.isnan(val_loss)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, train_loss, label="train loss")
    if evaluated.any():
        left.plot(epochs[evaluated], val_loss[evaluated], marker="." if evaluated.sum() < 60 else None, label=f"{eval_name} loss")
        right.plot(epochs[evaluated], 100 * f1[evaluated], label=f"{eval_name} macro F1")
        right.plot(epochs[evaluated], 100 * acc[evaluated], label=f"{eval_name} accuracy", alpha=0.7)
    for ax in (left, right):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    left.set_ylabel("cross-entropy")
    right.set_ylabel("%")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def fold_mean_history(histories: Sequence[Iterable[Any]]) -> list[dict[str, Any]]:
    """Per epoch, the mean over folds of each of train loss, validation loss,
    accuracy and macro F1 (folds that stopped earlier drop out of later epochs;
    an epoch nobody evaluated keeps NaN): one cross-validated learning curve."""
    by_epoch: dict[int, list[dict[str, Any]]] = {}
    for history in histories:
        for row in history_rows(history):
            by_epoch.setdefault(int(row["epoch"]), []).append(row)
    out = []
    for epoch in sorted(by_epoch):
        rows = by_epoch[epoch]
        mean = {"epoch": epoch, "folds": len(rows)}
        for key in ("train_loss", "val_loss", "accuracy", "macro_f1"):
            values = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)
            mean[key] = float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else math.nan
        out.append(mean)
    return out


def plot_candidates(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str | None = None, winner: str | None = None) -> Path:
    """The learning curves a choice between candidates rests on: validation loss
    (left) and validation macro F1 (right) per epoch, one line per candidate (the
    fold-mean curves of :func:`fold_mean_history`), the winner drawn thicker. The
    study picked its stage-4 winner by reading such curves; the stage report shows
    them beside the rule the software applies."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        epochs = np.array([r["epoch"] for r in rows], dtype=float)
        val = np.array([r.get("val_loss", math.nan) for r in rows], dtype=float)
        f1 = np.array([r.get("macro_f1", math.nan) for r in rows], dtype=float)
        ok = ~np.isnan(val)
        width, label = (2.5, f"{name} (winner)") if name == winner else (1.0, name)
        line = left.plot(epochs[ok], val[ok], linewidth=width, label=label)[0]
        right.plot(epochs[ok], 100 * f1[ok], linewidth=width, color=line.get_color(), label=label)
    left.set_ylabel("validation cross-entropy (fold mean)")
    right.set_ylabel("validation macro F1 % (fold mean)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str | None = None, normalize: bool = True) -> Path:
    """Confusion matrix PNG: rows true class, columns predicted; cells show the row
    percentage (``normalize``) and the count."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if normalize else cm
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 0.8 + 0.7 * k))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            text = f"{100 * shown[i, j]:.0f}%\n{int(cm[i, j])}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if shown[i, j] > (0.5 if normalize else shown.max() / 2) else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return _save(fig, path)


# --------------------------------------------------------------------------- seeds


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,  # sample standard deviation
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (also min, max, n) over runs with different
    seeds of accuracy, macro F1, loss, best epoch, and each class's F1."""
    summary: dict[str, Any] = {"seeds": [r.get("seed") for r in runs], "n": len(runs)}
    for key in SUMMARY_KEYS:
        if any(key in r for r in runs):
            summary[key] = _mean_std([r.get(key) for r in runs])
    classes: list[str] = []
    for r in runs:
        for name in r.get("per_class", {}) or {}:
            if name not in classes:
                classes.append(name)
    if classes:
        summary["per_class_f1"] = {name: _mean_std([r["per_class"][name]["f1"] for r in runs if name in r.get("per_class", {})]) for name in classes}
    return jsonable(summary)


def seeds_rows(runs: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per seed, then mean and std rows (accuracy and F1 in percent)."""
    rows = [
        {"seed": r.get("seed"), "accuracy": 100 * r["accuracy"], "macro_f1": 100 * r["macro_f1"], "loss": r.get("loss"), "best_epoch": r.get("best_epoch")}
        for r in runs
    ]
    for stat in ("mean", "std"):
        rows.append(
            {
                "seed": stat,
                "accuracy": 100 * summary["accuracy"][stat] if summary["accuracy"][stat] is not None else None,
                "macro_f1": 100 * summary["macro_f1"][stat] if summary["macro_f1"][stat] is not None else None,
                "loss": summary.get("loss", {}).get(stat),
                "best_epoch": summary.get("best_epoch", {}).get(stat),
            }
        )
    return rows
