"""ser.adapters.champion against a real MLflow server (and a real S3 for the serving copy):
the promotion lock, the gate's compare-and-set under a forced race, and the S3
serving copy following the registry."""

from __future__ import annotations

import io
import json
import threading
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ser.adapters import champion
from ser.study import models
from ser.adapters.tracking import Tracker
from tests.servers import mlflow_server, s3_server, tracking_env  # noqa: F401  (fixtures)

TINY = models.ArchSpec(cnn="squirtle", in_size=60, n_classes=7, conv_channels=(4, 4, 4), fc_features=(16, 16))
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _versions(client, name: str, n: int) -> list[str]:
    """A registered model with ``n`` versions (no artifacts: the gate only reads aliases and tags)."""
    client.create_registered_model(name)
    return [str(client.create_model_version(name, source=f"s3://nowhere/{name}/{i}").version) for i in range(n)]


def _run_threads(*targets) -> list:
    results, errors = [None] * len(targets), []

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a gate thread hung"
    if errors:
        raise errors[0]
    return results


# -- the lock -------------------------------------------------------------------------


@pytest.mark.integration
def test_promotion_lock_excludes_waits_and_breaks_only_a_stale_ticket(tracking_env):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    first = champion.PromotionLock(_client(), name).acquire()
    assert first.held()
    with pytest.raises(champion.PromotionLockTimeout, match="held by ticket"):
        champion.PromotionLock(_client(), name, wait=0.5, stale_after=60).acquire()
    # the timed-out waiter took its ticket back: once the holder releases, the next one gets it at once
    first.release()
    assert not first.held()
    with champion.PromotionLock(_client(), name, wait=5) as second:
        assert second.held()
    # a holder that died (never released) is broken after stale_after, by its ticket number only
    crashed = champion.PromotionLock(_client(), name).acquire()
    waiter = champion.PromotionLock(_client(), name, stale_after=0.5, wait=10).acquire()
    assert waiter.broken == [crashed.ticket] and not crashed.held() and waiter.held()
    crashed.release()  # a late release of a broken ticket is harmless, and leaves the waiter's ticket alone
    assert waiter.held()
    waiter.release()


# -- the gate: compare-and-set -------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("first", ["better", "worse", "free"])
def test_two_candidates_racing_only_the_better_one_ends_champion(tracking_env, first):
    """v1 champion (0.50); v2 (0.70) and v3 (0.60) both beat it and both score it
    before either takes the lock (a barrier). ``first``: which one then promotes
    first (the other waits until it did), or ``free`` (no order forced)."""
    client = _client()
    name = f"race-{first}-{uuid.uuid4().hex[:8]}"
    v1, better, worse = _versions(client, name, 3)
    value = {v1: 0.50, better: 0.70, worse: 0.60}  # each model's macro F1 on the (shared) test rows
    assert champion.gate(name, v1, value[v1], lambda v: champion.Score(value[v]), client=client).promoted

    both_scored = threading.Barrier(2, timeout=60)
    done = {better: threading.Event(), worse: threading.Event()}
    calls: dict[str, list[str]] = {better: [], worse: []}
    second = {"better": worse, "worse": better}.get(first)
    other = {better: worse, worse: better}

    def scorer(me: str):
        def score(version: str) -> champion.Score:
            calls[me].append(version)
            if version == v1:  # the old champion: both have scored it before either goes on
                both_scored.wait()
                if me == second:
                    assert done[other[me]].wait(60), "the first candidate never finished"
            return champion.Score(value[version], how="on the same rows")
        return score

    def candidate(me: str):
        def run() -> champion.Verdict:
            try:
                return champion.gate(name, me, value[me], scorer(me), client=_client())
            finally:
                done[me].set()
        return run

    verdicts = dict(zip((better, worse), _run_threads(candidate(better), candidate(worse))))
    assert champion.champion_version(name, client) == better
    tags = {v: client.get_model_version(name, v).tags for v in (v1, better, worse)}
    assert tags[v1]["promotion.superseded_by"] in (better, worse)
    if first == "better":  # the worse one finds the alias moved, scores the winner and loses to it
        assert calls[worse] == [v1, better] and verdicts[worse].attempts == 2 and not verdicts[worse].promoted
        assert tags[worse]["promotion.decision"] == "kept champion" and tags[worse]["promotion.champion_version"] == better
        assert "does not beat champion v" + better in tags[worse]["promotion.reason"]
        assert f"after the champion moved: v{v1}->v{better}" in tags[worse]["promotion.reason"]
        assert float(tags[worse]["promotion.champion_value"]) == pytest.approx(0.70)
    elif first == "worse":  # the worse one was champion for a moment; the better one re-scores it and displaces it
        assert calls[better] == [v1, worse] and verdicts[better].attempts == 2 and verdicts[better].promoted
        assert tags[worse]["promotion.decision"] == "promoted" and tags[worse]["promotion.superseded_by"] == better
        assert tags[better]["promotion.champion_version"] == worse and "beats champion v" + worse in tags[better]["promotion.reason"]
    else:
        loser = verdicts[worse]
        assert tags[worse].get("promotion.superseded_by") == better or (not loser.promoted and loser.champion_version == better)
    assert tags[better]["promotion.decision"] == "promoted"
    # the lock's tickets are all released
    assert not list(client.search_model_versions(f"name='{name}{champion.LOCK_SUFFIX}'"))


@pytest.mark.integration
def test_gate_keeps_a_champion_it_cannot_score_and_a_tie(tracking_env):
    client = _client()
    name = f"keep-{uuid.uuid4().hex[:8]}"
    v1, v2, v3 = _versions(client, name, 3)
    first = champion.gate(name, v1, 0.5, lambda v: pytest.fail("no champion: nothing to score"), client=client)
    assert first.promoted and first.reason == "no champion yet"
    odd = champion.gate(name, v2, 0.9, lambda v: champion.Score(None, "it predicts other labels"), client=client,
                        tags={"promotion.test_set": "split=random"})
    assert not odd.promoted and "cannot be scored on this test set (it predicts other labels)" in odd.reason
    tie = champion.gate(name, v3, 0.5, lambda v: champion.Score(0.5), client=client)
    assert not tie.promoted and champion.champion_version(name, client) == v1
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "kept champion" and tags["promotion.test_set"] == "split=random"
    assert champion.gate(name, v1, 0.5, lambda v: pytest.fail("not scored again"), client=client).promoted  # a rerun


# -- the S3 serving copy follows the registry -------------------------------------------


def _bundle(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = models.build(TINY).eval()
    return models.save_bundle(path / "model.pt", net, LABELS, {"kind": "mel", "size": 60}, {"seed": seed})


def _mar_model(store, bucket: str, key: str) -> bytes:
    """The model.pt inside the .mar at ``key``."""
    from ser.serve.package import SERIALIZED

    data = store.client.get_object(bucket, key).read()
    with zipfile.ZipFile(io.BytesIO(data)) as mar:
        return mar.read(SERIALIZED)


@pytest.mark.integration
def test_the_s3_serving_copy_follows_the_registry(tracking_env, s3_server, tmp_path, monkeypatch):  # noqa: F811
    from ser.kubeflow import tasks as steps

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store, bucket = s3_server.store(), f"ser-models-{uuid.uuid4().hex[:6]}"
    store.ensure_bucket(bucket)
    name = f"serve-{uuid.uuid4().hex[:8]}"
    tracker = Tracker.from_env(strict=True)
    example = np.random.default_rng(0).random((2, 60, 60), dtype=np.float32)
    bundles, versions = [], []
    for seed in (1, 2):
        bundles.append(_bundle(tmp_path / f"m{seed}", seed))
        (tmp_path / f"m{seed}" / "metrics.json").write_text('{"macro_f1": 0.5}')
        with tracker.run(f"final-{seed}", kind="final"):
            versions.append(tracker.log_model(bundles[-1], registered_name=name, input_example=example).version)
    assert champion.sync_serving_copy(name, store, bucket) is None  # no champion: S3 left as it is
    assert store.list(bucket, name) == []

    champion.gate(name, versions[0], 0.5, lambda v: pytest.fail("no champion yet"))
    pointer = champion.sync_serving_copy(name, store, bucket)
    mar_key = f"{name}/champion/model-store/{name}.mar"
    assert pointer["version"] == versions[0] and pointer["storage_uri"] == f"s3://{bucket}/{name}/champion"
    assert f"{name}/champion/config/config.properties" in {k for k, _ in store.list(bucket, name)}
    assert _mar_model(store, bucket, mar_key) == bundles[0].read_bytes()
    before = dict(store.list(bucket, f"{name}/champion"))

    # a candidate that does not beat the champion: published as a version, the serving copy unchanged
    verdict = champion.gate(name, versions[1], 0.4, lambda v: champion.Score(0.5))
    info = steps.publish(tmp_path / "m2", None, bucket, name, tmp_path / "pub2", promote=verdict.promoted,
                         registry_version=versions[1])
    assert not info["promoted"] and "champion_uri" not in info
    assert f"{info['uri'].split(bucket + '/', 1)[1]}/model.pt" in {k for k, _ in store.list(bucket, name)}
    assert dict(store.list(bucket, f"{name}/champion")) == before
    assert _mar_model(store, bucket, mar_key) == bundles[0].read_bytes()

    # the registry moves (here by the gate, as any promotion would): the next sync copies the new champion
    assert champion.gate(name, versions[1], 0.9, lambda v: champion.Score(0.5)).promoted
    info = steps.publish(tmp_path / "m2", None, bucket, name, tmp_path / "pub3", promote=True, registry_version=versions[1])
    assert info["champion_version"] == versions[1] and info["champion_uri"] == f"s3://{bucket}/{name}/champion"
    assert _mar_model(store, bucket, mar_key) == bundles[1].read_bytes()
    pointer = json.loads(store.client.get_object(bucket, f"{name}/{champion.POINTER}").read())
    assert pointer["version"] == versions[1] and pointer["model_uri"] == f"models:/{name}/{versions[1]}"
    assert pointer["promotion"]["decision"] == "promoted"


def test_without_mlflow_a_pipeline_gate_promotes_nothing_and_says_why(tmp_path, monkeypatch):
    from ser.kubeflow import tasks as steps

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    verdict = steps.compare_with_champion(tmp_path, tmp_path, {"macro_f1": 0.9}, "ser-models", "ser-english")
    assert verdict["promote"] is False and verdict["registered"] is False and verdict["champion"] == -1.0
    assert "no model registry" in verdict["reason"] and "s3://ser-models/ser-english/champion/ is left as it is" in verdict["reason"]
