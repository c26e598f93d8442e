"""ser.adapters.tracking and ser.adapters.models_uri against a real MLflow server (artifacts proxied to local S3)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ser.adapters import champion, models_uri
from ser.study import models
from ser.ops.services import free_port
from ser.adapters.tracking import NullTracker, Tracker, TrackingError
from tests.helpers import count_connections
from tests.servers import mlflow_server, s3_server, tracking_env  # noqa: F401  (fixtures)

TINY = models.ArchSpec(cnn="squirtle", in_size=60, n_classes=7, conv_channels=(4, 4, 4), fc_features=(16, 16))
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


@dataclass
class Epoch:  # shaped like ser.study.training.EpochRecord
    epoch: int
    train_loss: float
    val_loss: float = math.nan
    accuracy: float = math.nan
    macro_f1: float = math.nan


def bundle(path: Path, seed: int) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    net = models.build(TINY).eval()
    return models.save_bundle(path / "model.pt", net, LABELS, {"kind": "mel", "size": 60}, {"seed": seed}), net


def train_a_little(tracker, epochs: int = 2) -> int:
    """A real (tiny) training loop reporting through the tracker; returns epochs done."""
    torch.manual_seed(0)
    net = models.build(TINY.with_(n_classes=2, fc_features=(8, 8)))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.rand(8, 60, 60), torch.tensor([0, 1] * 4)
    on_epoch = tracker.epoch_callback()
    done = 0
    with tracker.run("fold-0", kind="fold", params={"lr": 0.01}):
        for epoch in range(1, epochs + 1):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            on_epoch(Epoch(epoch, loss.item(), loss.item(), 0.5, 0.4))
            tracker.log_metrics({"lr": 0.01}, step=epoch)
            done += 1
    return done


# -- without a server ---------------------------------------------------------------


def test_unreachable_server_non_strict_warns_once_and_training_finishes(monkeypatch, caplog):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker.from_env()
    assert isinstance(tracker, NullTracker) and not tracker.enabled
    assert isinstance(Tracker.from_env(), NullTracker)  # asked again: still one warning
    assert train_a_little(tracker) == 2
    assert tracker.log_model("missing.pt", registered_name="x") is None
    assert tracker.champion_info("x") is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "ser.adapters.tracking" and r.levelname == "WARNING"]
    assert len([w for w in warnings if w.startswith("tracking skipped:")]) == 1 and uri in warnings[0]


def test_unreachable_server_strict_fails_fast(monkeypatch):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    attempts = count_connections(monkeypatch, port)
    with pytest.raises(TrackingError, match=f"required \\(strict\\) but cannot reach the MLflow server at {uri}"):
        Tracker.from_env(strict=True)
    assert 1 <= len(attempts) <= 2, f"{len(attempts)} connection attempts: the tracker retries an unreachable server"


def test_unset_uri(monkeypatch, caplog):
    from ser.adapters import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_warned", set())  # the warning is once per process; start afresh
    assert isinstance(Tracker.from_env(), NullTracker)
    assert "tracking skipped: MLFLOW_TRACKING_URI is not set" in caplog.text
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI is not set"):
        Tracker.from_env(strict=True)


def test_run_kinds_are_checked():
    with pytest.raises(ValueError, match="kind must be one of"):
        with NullTracker().run("x", kind="trial"):
            pass


def test_resolve_local_paths(tmp_path):
    path, _ = bundle(tmp_path, 0)
    assert models_uri.resolve(path) == path
    assert models_uri.resolve(tmp_path) == path
    assert models_uri.resolve(f"file://{path}") == path
    with pytest.raises(models_uri.ModelURIError, match="no such model"):
        models_uri.resolve(tmp_path / "nope")


def test_resolve_registry_uri_needs_a_server(monkeypatch):
    import mlflow

    # First forget a URI an earlier test set: mlflow.set_tracking_uri(None) also unsets
    # the MLFLOW_TRACKING_URI variable, so it must come before setenv.
    mlflow.set_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(models_uri.ModelURIError, match="cannot reach the MLflow server"):
        models_uri.resolve("models:/ser-english@champion")


# -- against the server --------------------------------------------------------------


@pytest.mark.integration
def test_stage_vector_fold_nesting_with_metrics_per_epoch(tracking_env):
    from mlflow import MlflowClient

    tracker = Tracker.from_env(strict=True)
    assert tracker.enabled and tracker.experiment == tracking_env["MLFLOW_EXPERIMENT_NAME"]
    with tracker.run("stage-1", kind="stage", params={"stage": 1, "trials": 2}) as stage:
        with tracker.run("vector-0", kind="vector", params={"arch": TINY.to_dict()}, tags={"vector": 0}) as vector:
            with tracker.run("fold-0", kind="fold") as fold:
                on_epoch = tracker.epoch_callback()
                on_epoch(Epoch(1, 1.9))  # not evaluated: NaNs are left out
                on_epoch(Epoch(2, 1.5, 1.6, 0.30, 0.25))
                on_epoch(Epoch(3, 1.2, 1.4, 0.40, 0.35))
            tracker.log_metrics({"cv_macro_f1": 0.35})
            tracker.log_dict({"folds": [0.35]}, "cv.json")
            tracker.set_tags({"rank": 1})
    client = MlflowClient()
    runs = {r.info.run_id: r for r in (client.get_run(x.info.run_id) for x in (stage, vector, fold))}
    s, v, f = (runs[x.info.run_id] for x in (stage, vector, fold))
    assert "mlflow.parentRunId" not in s.data.tags
    assert v.data.tags["mlflow.parentRunId"] == s.info.run_id and f.data.tags["mlflow.parentRunId"] == v.info.run_id
    assert (s.data.tags["ser.kind"], v.data.tags["ser.kind"], f.data.tags["ser.kind"]) == ("stage", "vector", "fold")
    assert v.data.params["arch.conv_channels"] == "[4, 4, 4]" and v.data.tags["vector"] == "0" and v.data.tags["rank"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(f.info.run_id, "train_loss")] == [(1, 1.9), (2, 1.5), (3, 1.2)]
    assert [m.step for m in client.get_metric_history(f.info.run_id, "val_loss")] == [2, 3]
    assert [m.step for m in client.get_metric_history(f.info.run_id, "macro_f1")] == [2, 3]
    assert v.data.metrics["cv_macro_f1"] == 0.35
    assert [a.path for a in client.list_artifacts(v.info.run_id)] == ["cv.json"]
    with pytest.raises(TrackingError, match="no open run"):
        tracker.log_metrics({"x": 1.0})


@pytest.mark.integration
def test_registry_challenger_champion_gate_and_loading_the_champion(tracking_env, tmp_path):
    from mlflow import MlflowClient

    tracker = Tracker.from_env(strict=True)
    name = f"ser-english-{tracking_env['MLFLOW_EXPERIMENT_NAME']}"
    client = MlflowClient()
    assert tracker.champion_info(name) is None

    logged, nets = [], []
    for seed in (1, 2, 3):
        path, net = bundle(tmp_path / f"m{seed}", seed)
        with tracker.run(f"final-{seed}", kind="final"):
            example = np.random.default_rng(seed).random((2, 60, 60), dtype=np.float32)
            logged.append(tracker.log_model(path, registered_name=name, input_example=example))
            if seed == 1:  # keep the run open until the system-metrics monitor has logged a sample
                run_id, deadline = tracker.active_run_id(), time.monotonic() + 60
                while not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics):
                    assert time.monotonic() < deadline, "no system metrics logged within 60 s"
                    time.sleep(0.2)
        nets.append(net)
        assert client.get_model_version_by_alias(name, "challenger").version == logged[-1].version
    assert [m.version for m in logged] == ["1", "2", "3"]

    def champion_scores(value):  # the champion's macro F1 on the candidate's rows
        return lambda version: champion.Score(value)

    assert champion.gate(name, "1", 0.50, champion_scores(None)).promoted  # first: no champion yet (not scored)
    assert not champion.gate(name, "2", 0.45, champion_scores(0.50)).promoted
    assert not champion.gate(name, "3", 0.50, champion_scores(0.50)).promoted  # a tie keeps it
    assert tracker.champion_info(name)["version"] == "1"
    rejected = client.get_model_version(name, "2").tags
    assert rejected["promotion.decision"] == "kept champion" and rejected["promotion.champion_version"] == "1"
    assert champion.gate(name, "3", 0.62, champion_scores(0.50)).promoted
    info = tracker.champion_info(name)
    assert info["version"] == "3" and info["tags"]["promotion.decision"] == "promoted"
    assert info["tags"]["macro_f1"] == "0.62" and info["run_id"] == logged[2].run_id

    # the champion comes back as a model.pt bundle and predicts like the network that was saved
    path = models_uri.resolve(f"models:/{name}@champion")
    loaded = models.load_bundle(path)
    assert loaded.labels == LABELS and loaded.meta["seed"] == 3
    x = torch.rand(1, 60, 60)
    with torch.no_grad():
        probs = torch.softmax(loaded.model(x), dim=1)
        assert probs.shape == (1, 7) and torch.allclose(loaded.model(x), nets[2](x))
    assert models_uri.resolve(f"runs:/{logged[2].run_id}/model").read_bytes() == path.read_bytes()
    assert models_uri.resolve(f"models:/{name}/1") != path  # another version, another file

    # the mlflow.pytorch model itself (pt2) accepts another batch size than its example
    import mlflow

    exported = mlflow.pytorch.load_model(f"models:/{name}@champion")
    assert tuple(exported(torch.rand(3, 60, 60)).shape) == (3, 7)
    run = client.get_run(logged[0].run_id)
    assert run.data.tags["ser.kind"] == "final"
    assert any(key.startswith("system/") for key in run.data.metrics), "system metrics were not logged"

    with pytest.raises(models_uri.ModelURIError, match="has no version with alias 'champion'"):
        models_uri.resolve("models:/no-such-model@champion")
