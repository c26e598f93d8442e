"""`ser demo --recipe plus` as a user runs it: real S3, MLflow and TorchServe, the ser_cv
pipeline through kfp.local, the ensemble served and asked; everything stopped after."""

from __future__ import annotations

import json

import pytest

from ser.cli import main


@pytest.mark.integration
def test_demo_with_the_plus_recipe_cross_validates_then_serves_the_ensemble(tmp_path, capsys, monkeypatch):
    from ser.ops import services

    monkeypatch.setenv("SER_STATE_DIR", str(tmp_path / "state"))  # a registry of its own
    work = tmp_path / "demo"
    assert main(["demo", "--recipe", "plus", "--budget", "smoke", "--per-class", "4", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "ser_cv Kubeflow pipeline" in out and "plus recipe, 2-fold speaker groups: UA" in out
    assert "on voices each fold model never heard" in out
    summary = json.loads((work / "summary.json").read_text())
    cv = summary["cv_scores"]
    assert cv["recipe"] == "plus" and 0.0 <= cv["ua"]["mean"] <= 1.0 and cv["ua"]["n"] == 2
    assert "serving the fold models as one ensemble" in out and "fresh synthetic recordings right" in out
    assert '"label"' in out and '"probabilities"' in out  # the endpoint's first answer, printed
    assert services.recorded_servers() == []  # S3, MLflow and TorchServe stopped and forgotten
