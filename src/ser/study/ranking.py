"""The ranking table (the study's Table 2): one row per scored vector, as CSV for
programs and Markdown for people, ordered as the study listed them.

Scores are fractions (0..1) in the CSV and percentages in the Markdown. A row holds
every parameter of its vector, so :func:`vector_from_row` rebuilds the vector (and
:func:`load_ranking` checks that every row still does).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ser.study import models
from ser.files import write_text
from ser.study.models import ArchSpec
from ser.study.search_space import SearchError, Vector


def as_float(value: Any) -> float:
    """A table cell or JSON value as a float; empty or missing is NaN."""
    return math.nan if value is None or value == "" else float(value)


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
    f1, acc = as_float(row.get("macro_f1")), as_float(row.get("accuracy"))
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
    m, s = as_float(mean), as_float(std)
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
            f"{as_float(r.get('BNM')):.2g}",
            f"{as_float(r.get('DP')):.2f}" if cnn != "bulba" else "-",
            f"{r.get('FCOC1')} {r.get('FCOC2')} {r.get('classes')}",
            f"{as_float(r.get('slope')):.3g}" if cnn == "charma" else "-",
            r.get("batch"), f"{as_float(r.get('LR')):.3g}",
            f"{as_float(r.get('seconds')):.0f}", str(r.get("fold_epochs") or ""),
            f"{as_float(r.get('val_loss')):.3f}" if not math.isnan(as_float(r.get("val_loss"))) else "-",
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
    return (write_text(out_dir / "ranking.csv", ranking_csv(rows)), write_text(out_dir / "ranking.md", ranking_markdown(rows, title, notes)))


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
