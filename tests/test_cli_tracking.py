"""`ser train`, `ser transfer`, `ser evaluate` tracked in MLflow, and `ser predict` from the registry.

Against the real local servers of tests/servers.py (MLflow with artifacts in SeaweedFS).
The registry is shared by the whole test session (other modules may register
``ser-english`` too), so "the first model becomes champion" is asserted when this
module finds no champion; the gate itself is always checked.
"""

from __future__ import annotations

import argparse
import json
import types

import numpy as np
import pytest
import soundfile as sf

from ser.cli import run, study
from ser.data.features import FeatureSpec
from ser.data.labels import ENGLISH, GREEK
from ser.ops.services import free_port
from tests.helpers import count_connections
from tests.helpers import banded_feature_set
from tests.servers import mlflow_server, s3_server, tracking_env  # noqa: F401  (fixtures)

SPEC = FeatureSpec(kind="mel", size=30, sample_rate=16000)
TINY = {"arch": {"cnn": "squirtle", "conv_channels": [8, 8, 8], "fc_features": [32, 32], "dropout": 0.25},
        "train": {"batch_size": 16, "lr": 0.002, "epochs": 4}}
FAST = ["--device", "cpu", "--threads", "1", "--no-progress"]
FINAL_ARTIFACTS = {"metrics.json", "learning_curve.png", "confusion_matrix.png", "improvements.md", "improvements.csv",
                   "config.json", "feature_spec.json"}


def main(argv: list[str]) -> int:
    """As ser.cli.main for the study group: a UserError is one stderr line and exit status 2."""
    parser = argparse.ArgumentParser(prog="ser")
    study.register(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(argv))


feature_set = banded_feature_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    return types.SimpleNamespace(root=root, config=config, english=feature_set(ENGLISH, 140).save(root / "english.npz"),
                                 greek=feature_set(GREEK, 60, seed=1).save(root / "greek.npz"))


def train_args(data, out, *extra: str) -> list[str]:
    return ["train", "--features", str(data.english), "--config", str(data.config), "--seed", "0", "--eval-every", "1",
            "--out", str(out), *extra, *FAST]


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def artifact_names(client, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


# -- without a server ---------------------------------------------------------------------


def test_unreachable_server_auto_goes_on_strict_fails_before_training(data, tmp_path, monkeypatch, capsys, caplog):
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    attempts = count_connections(monkeypatch, port)
    assert main(train_args(data, tmp_path / "strict", "--tracking", "strict")) == 2
    assert 1 <= len(attempts) <= 2, f"{len(attempts)} connection attempts before failing"
    err = capsys.readouterr().err
    assert "ser train: error: tracking is required (strict) but cannot reach the MLflow server at " + uri in err
    assert not (tmp_path / "strict").exists(), "strict tracking must fail before training"

    caplog.clear()
    assert main(train_args(data, tmp_path / "auto", "--epochs", "1")) == 0  # --tracking auto is the default
    skipped = [r for r in caplog.records if r.getMessage().startswith("tracking skipped:")]
    assert len(skipped) == 1 and uri in skipped[0].getMessage() and skipped[0].levelname == "WARNING"
    assert (tmp_path / "auto" / "model.pt").is_file() and not (tmp_path / "auto" / "tracking.json").exists()

    capsys.readouterr()
    caplog.clear()
    assert main(train_args(data, tmp_path / "off", "--epochs", "1", "--tracking", "off")) == 0
    assert "tracking" not in capsys.readouterr().err and "tracking" not in caplog.text


# -- against the servers ------------------------------------------------------------------


@pytest.mark.integration
def test_train_tracks_registers_and_gates_promotion_then_predict_uses_the_champion(data, tracking_env, tmp_path, capsys):  # noqa: F811
    from mlflow import MlflowClient

    client = MlflowClient()
    name = "ser-english"
    champion_before = alias_version(client, name, "champion")

    # 1. a proper run: final run, per-epoch metrics, artifacts, model registered as challenger
    first = tmp_path / "first"
    assert main(train_args(data, first, "--tracking", "strict")) == 0
    out = capsys.readouterr().out
    record = json.loads((first / "tracking.json").read_text())
    metrics = json.loads((first / "metrics.json").read_text())
    v1 = record["version"]
    assert record["registered_name"] == name and f"registry: {name} v{v1} registered (alias challenger)" in out
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ser.kind"] == "final"
    assert run.info.experiment_id == client.get_experiment_by_name(tracking_env["MLFLOW_EXPERIMENT_NAME"]).experiment_id
    params = run.data.params
    assert (params["arch.cnn"], params["arch.conv_channels"], params["train.lr"], params["train.epochs"]) == ("squirtle", "[8, 8, 8]", "0.002", "4")
    assert (params["feature_spec.kind"], params["feature_spec.size"], params["split"], params["seed"]) == ("mel", "30", "random", "0")
    assert params["sizes.test_rows"] == str(metrics["n"]) and params["config_hash"] == metrics["config_hash"]
    for metric in ("train_loss", "val_loss", "accuracy", "macro_f1"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2, 3, 4], metric
    assert run.data.metrics["test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert any(key.startswith("system/") for key in run.data.metrics), "system metrics are on for final runs"
    assert FINAL_ARTIFACTS <= artifact_names(client, run.info.run_id)
    assert alias_version(client, name, "challenger") == v1
    version = client.get_model_version(name, v1)
    assert version.run_id == run.info.run_id and "promotion.decision" in version.tags
    if champion_before is None:  # the first model of the registry becomes champion
        assert alias_version(client, name, "champion") == v1 and version.tags["promotion.decision"] == "promoted"
        assert f"promotion: {name} v{v1} is now champion (no champion yet)" in out
    champion = alias_version(client, name, "champion")
    assert champion is not None

    # 2. a worse model (1 epoch at a tiny LR), two seeds: final runs nested under a parent; seed 0's
    #    model (OUT/model.pt) is registered and scored against the champion on the same held-out rows
    second = tmp_path / "second"
    assert main(train_args(data, second, "--epochs", "1", "--lr", "1e-7", "--seeds", "2", "--tracking", "strict")) == 0
    out = capsys.readouterr().out
    seed0, seed1 = (json.loads((second / f"seed-{s}" / "tracking.json").read_text()) for s in (0, 1))
    assert seed1.get("version") is None and seed1["model_uri"].startswith("models:/")  # logged, not registered
    runs = [client.get_run(r["run_id"]) for r in (seed0, seed1)]
    parent_id = runs[0].data.tags["mlflow.parentRunId"]
    assert runs[1].data.tags["mlflow.parentRunId"] == parent_id and [r.data.params["seed"] for r in runs] == ["0", "1"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["ser.role"] == "seeds" and "test_macro_f1_mean" in parent.data.metrics
    assert {"seeds.md", "seeds.json"} <= artifact_names(client, parent_id)
    v2 = seed0["version"]
    assert int(v2) > int(v1) and alias_version(client, name, "challenger") == v2
    assert alias_version(client, name, "champion") == champion, "a worse model must not become champion"
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "kept champion" and tags["promotion.champion_version"] == champion
    assert f"promotion: {name} v{v2} stays challenger; champion remains v{champion}" in out
    assert float(tags["promotion.candidate_value"]) < float(tags["promotion.champion_value"])
    assert "split=random" in tags["promotion.test_set"] and f"rows={metrics['n']}" in tags["promotion.test_set"]
    if champion == v1:  # the champion was scored on the very rows of its own test set: the same number
        assert float(tags["promotion.champion_value"]) == pytest.approx(metrics["macro_f1"], abs=1e-5)
    assert runs[0].data.tags["promotion.decision"] == "kept champion"

    # 3. ser predict --model models:/ser-english@champion FILE
    rate = 16000
    t = np.arange(rate) / rate
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(rate)).astype(np.float32), rate)
    assert main(["predict", str(wav), "--model", f"models:/{name}@champion", "--threads", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{wav}: ")
    probs = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ", 1)[1].split(", ")]
    assert sum(probs) == pytest.approx(1.0, abs=0.01)


@pytest.mark.integration
def test_transfer_and_evaluate_runs(data, tracking_env, tmp_path, capsys):  # noqa: F811
    from mlflow import MlflowClient

    client = MlflowClient()
    source = tmp_path / "english"
    assert main(train_args(data, source, "--epochs", "2", "--tracking", "off")) == 0
    # trained while not tracking: the same command with tracking logs the finished run from its files, once
    assert main(train_args(data, source, "--epochs", "2", "--tracking", "strict", "--no-register")) == 0
    record = json.loads((source / "tracking.json").read_text())
    assert record["version"] is None and "skipping" in capsys.readouterr().err
    assert [m.step for m in client.get_metric_history(record["run_id"], "val_loss")] == [1, 2]
    assert FINAL_ARTIFACTS <= artifact_names(client, record["run_id"])
    assert main(train_args(data, source, "--epochs", "2", "--tracking", "strict", "--no-register")) == 0
    assert f"already tracked as MLflow run {record['run_id']}" in capsys.readouterr().err
    greek_champion_before = alias_version(client, "ser-greek", "champion")

    out = tmp_path / "transfer"
    assert main(["transfer", "--model", str(source), "--features", str(data.greek), "--freeze", "g", "--lrs", "1e-3,3e-3",
                 "--batches", "16", "--epochs", "2", "--eval-every", "1", "--tracking", "strict", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "tracking.json").read_text())
    assert record["registered_name"] == "ser-greek" and "registry: ser-greek" in printed
    parent = client.get_run(record["run_id"])
    assert parent.data.tags["ser.kind"] == "transfer" and parent.data.tags["ser.role"] == "grid"
    assert parent.data.params["freeze"] == "g" and parent.data.params["cells"] == "2"
    assert {"metrics.json", "learning_curve.png", "confusion_matrix.png", "runs.csv", "summary.csv", "feature_spec.json"} <= artifact_names(client, parent.info.run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.params["lr"] for c in children) == ["0.001", "0.003"]
    for child in children:
        assert child.data.tags["ser.role"] == "cell" and child.data.params["subset"] == "g"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [1, 2]
        assert "best_test_loss" in child.data.metrics
    assert alias_version(client, "ser-greek", "challenger") == record["version"]
    if greek_champion_before is None:
        assert alias_version(client, "ser-greek", "champion") == record["version"]
    assert "promotion.decision" in client.get_model_version("ser-greek", record["version"]).tags

    evaluated = tmp_path / "evaluate"
    assert main(["evaluate", "--model", str(source), "--features", str(data.english), "--rows", "test", "--tracking", "strict",
                 "--experiment", "ser-evaluations", "--out", str(evaluated), *FAST]) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    experiment = client.get_experiment_by_name("ser-evaluations")
    runs = client.search_runs([experiment.experiment_id], "tags.`ser.kind` = 'evaluate'", order_by=["attributes.start_time DESC"])
    run = runs[0]
    assert run.data.params["rows"] == "test" and run.data.metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert run.data.metrics["n"] == metrics["n"]
    assert {"metrics.json", "confusion_matrix.png", "per_class.csv", "predictions.csv"} <= artifact_names(client, run.info.run_id)


@pytest.mark.integration
def test_a_failing_tracking_step_is_reported_never_silent(data, tracking_env, tmp_path, monkeypatch, capsys, caplog):  # noqa: F811
    from mlflow import MlflowClient

    from ser.adapters.tracking import Tracker

    def broken(self, *args, **kwargs):
        raise RuntimeError("artifact store is down")

    monkeypatch.setattr(Tracker, "log_model", broken)
    client = MlflowClient()
    auto = tmp_path / "auto"
    assert main(train_args(data, auto, "--epochs", "1")) == 0  # training finishes, results on disk
    experiment = client.get_experiment_by_name(tracking_env["MLFLOW_EXPERIMENT_NAME"])
    failed = [r for r in caplog.records if r.name == "ser.adapters.track_runs" and r.getMessage().startswith("tracking failed")]
    assert len(failed) == 1 and failed[0].levelname == "WARNING"
    assert "tracking failed while trying to log the model: RuntimeError: artifact store is down" in failed[0].getMessage()
    assert "is incomplete" in failed[0].getMessage()
    assert (auto / "model.pt").is_file() and not (auto / "tracking.json").exists()
    run = client.search_runs([experiment.experiment_id], "tags.`ser.adapters.tracking` = 'incomplete'")[0]
    assert run.data.tags["ser.kind"] == "final" and "artifact store is down" in run.data.tags["ser.tracking_error"]

    assert main(train_args(data, tmp_path / "strict", "--epochs", "1", "--tracking", "strict")) == 2
    assert "tracking failed (strict) while trying to log the model" in capsys.readouterr().err
    failed = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 1 and failed[0].data.tags["ser.kind"] == "final"
