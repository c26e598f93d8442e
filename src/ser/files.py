"""JSON and text files written whole or not at all, and values made JSON-safe.

Every step of a run leaves JSON (fold results, metrics, search state) that a rerun
reads to skip finished work, so a crash must never leave half a file: each write
goes to a temporary name in the same folder and is renamed over the target.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values, paths as strings and
    NaN/inf as None (strict JSON readers refuse NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Path):
        return str(value)
    return value


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically, creating the folder; the temporary name carries the
    process id so that two writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    """``data`` as JSON (see :func:`jsonable`), written atomically."""
    return write_text(path, json.dumps(jsonable(data), indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def relative_to(path: str | Path, base: str | Path) -> str:
    """``path`` relative to ``base`` when it lies under it (POSIX form), else unchanged:
    tables inside a pipeline artifact name their files relative to the artifact, which
    moves between steps."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return str(p)
