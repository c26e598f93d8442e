"""Step outputs are written whole or not at all: a rerun trusts whatever it finds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ser import files


def test_json_holds_numpy_values_and_nan_as_null(tmp_path):
    data = {"f1": np.float32(0.5), "n": np.int64(3), "loss": math.nan, "inf": np.inf, "cm": np.eye(2, dtype=np.int64), "p": Path("a/b")}
    path = files.write_json(tmp_path / "deep" / "metrics.json", data)
    assert json.loads(path.read_text()) == {"f1": 0.5, "n": 3, "loss": None, "inf": None, "cm": [[1, 0], [0, 1]], "p": "a/b"}
    assert files.read_json(path)["n"] == 3


def test_a_failed_write_leaves_the_previous_file_and_no_debris(tmp_path):
    path = files.write_json(tmp_path / "fold0.json", {"epochs": 5})
    with pytest.raises(TypeError):
        files.write_json(path, {"epochs": object()})
    assert files.read_json(path) == {"epochs": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.json"]


def test_a_write_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    path = files.write_text(tmp_path / "ranking.md", "old\n")
    seen = []
    real_replace = files.os.replace

    def spy(src, dst):  # what a reader could see just before the rename: the old text
        seen.append((Path(dst).read_text(), Path(src).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    files.write_text(path, "new\n")
    assert seen == [("old\n", "new\n")] and path.read_text() == "new\n"
