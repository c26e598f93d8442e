"""Reading and writing the CSV tables that travel between steps.

The utterance table (ser.data.corpora.COLUMNS) may carry the augmentation columns
(ser.data.augment.AUGMENT_COLUMNS); rows travel as plain dicts so one reader serves
both, and a person can open every table in a spreadsheet.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable


def read_rows(path: str | Path, roots: Iterable[str | Path] = ()) -> list[dict]:
    """The rows of a table. ``roots``: folders a relative ``path`` column is resolved
    against, first hit wins (a pipeline artifact's table names its files relative to the
    artifact folders); none: relative paths stay as written (to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    bases = [Path(r) for r in roots]
    for row in rows if bases else ():
        rel = row["path"]
        if os.path.isabs(rel):
            continue
        hit = next((b / rel for b in bases if (b / rel).exists()), None)
        if hit is None:
            raise FileNotFoundError(f"{rel}: listed in {path} but found under none of {', '.join(map(str, bases))}")
        row["path"] = str(hit.resolve())
    return rows


def write_rows(rows: Iterable[dict], path: str | Path, columns: Iterable[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    tmp.replace(path)
    return path


def write_problems(problems: Iterable[tuple[str, str]], path: str | Path) -> Path:
    return write_rows(({"path": p, "reason": r} for p, r in problems), path, ("path", "reason"))
