"""The typed steps (ser.steps): train, evaluate and transfer called as library
functions, with no command line; the Kubeflow final-train step tests on the rows the
search held out."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from ser import settings, steps
from ser.adapters import track_runs
from ser.study import models
from ser.kubeflow import tasks as pipeline_steps
from ser.data.labels import ENGLISH, GREEK
from tests.helpers import banded_feature_set
from tests.servers import s3_server  # noqa: F401  (fixture)

TINY = {"arch": {"cnn": "squirtle", "conv_channels": [8, 8, 8], "fc_features": [32, 32], "dropout": 0.25},
        "train": {"batch_size": 16, "lr": 0.002, "epochs": 3}}


def off():
    return track_runs.open_session("off")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    english = banded_feature_set(ENGLISH, 140).save(root / "english.npz")
    greek = banded_feature_set(GREEK, 60, seed=1).save(root / "greek.npz")
    return root, english, greek


def predicted_sources(folder) -> set[str]:
    with (folder / "predictions.csv").open(encoding="utf-8") as f:
        return {row["source_id"] for row in csv.DictReader(f)}


def test_train_is_a_library_call_and_a_finished_run_is_reused(data, tmp_path):
    root, english, _ = data
    req = steps.TrainRequest(features=english, out=tmp_path / "run", config=TINY, split="speaker", seed=3, device="cpu", progress=False)
    result = steps.train(req, off())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.metrics == metrics and not result.runs[0].reused
    assert metrics["seed"] == 3 and metrics["split"] == "speaker" and metrics["sizes"]["shared_speakers"] == 0
    assert 0.0 <= metrics["ua"] <= 1.0 and metrics["checkpoint"] == "validation"
    bundle = models.load_bundle(tmp_path / "run" / "model.pt")
    assert bundle.labels == ENGLISH and bundle.meta["config_hash"] == metrics["config_hash"]
    again = steps.train(req, off())
    assert again.runs[0].reused and again.metrics["config_hash"] == metrics["config_hash"]
    changed = steps.train(req.with_(seed=4), off())  # another seed is another run
    assert not changed.runs[0].reused


def test_held_out_sources_are_the_test_rows_of_training_and_evaluation(data, tmp_path):
    """The study's final model is tested on exactly the sources its search held out,
    and `evaluate --rows test` scores the same rows again from the bundle."""
    _, english, _ = data
    held = tuple(f"0-{i}" for i in range(0, 140, 5))  # 28 sources, every class
    req = steps.TrainRequest(features=english, out=tmp_path / "run", config=TINY, held_out_sources=held, device="cpu", progress=False)
    metrics = steps.train(req, off()).metrics
    assert metrics["sizes"]["test_rows"] == len(held) and metrics["held_out"]
    assert models.load_bundle(tmp_path / "run" / "model.pt").meta["held_out_sources"] == sorted(held)
    ev = steps.evaluate(steps.EvaluateRequest(model=tmp_path / "run" / "model.pt", features=english, out=tmp_path / "eval", rows="test",
                                              device="cpu"), off())
    assert ev.rows == len(held) and predicted_sources(tmp_path / "eval") == set(held)
    assert ev.metrics["accuracy"] == pytest.approx(metrics["accuracy"])  # the same rows, the same model
    with pytest.raises(steps.StepError, match="held out"):
        steps.train(req.with_(held_out_sources=("nowhere",), out=tmp_path / "other"), off())


def test_pipeline_final_train_tests_on_the_searchs_held_out_sources(data, tmp_path):
    """A fresh split of the winner's feature set could test on rows the search trained
    on; the Kubeflow step reads the held-out ids from winner_meta.json instead."""
    _, english, _ = data
    features = tmp_path / "features"
    features.mkdir()
    (features / pipeline_steps.feature_file("mel", 30)).symlink_to(english)
    held = sorted(f"0-{i}" for i in range(1, 140, 5))
    ranking = tmp_path / "ranking"
    ranking.mkdir()
    (ranking / "winner.json").write_text(json.dumps(TINY))
    (ranking / "winner_meta.json").write_text(json.dumps({
        "vector": {"feature": "mel", "size": 30}, "seed": 0,
        "split": {"protocol": "random", "seed": 0, "test_size": 0.2, "test_source_ids": held}}))
    metrics = pipeline_steps.final_train(features, tmp_path / "final", ranking_dir=ranking, eval_every=1, device="cpu")
    assert metrics["sizes"]["test_rows"] == len(held)
    pipeline_steps.evaluate(tmp_path / "final", features, tmp_path / "eval")
    assert predicted_sources(tmp_path / "eval") == set(held)


def test_transfer_is_a_library_call(data, tmp_path):
    root, english, greek = data
    steps.train(steps.TrainRequest(features=english, out=tmp_path / "en", config=TINY, device="cpu", progress=False), off())
    req = steps.TransferRequest(model=tmp_path / "en" / "model.pt", features=greek, out=tmp_path / "gr", freeze=("g",), lrs="1e-3",
                                batches="16", epochs=2, eval_every=1, device="cpu", progress=False)
    assert req.lrs == (1e-3,) and req.batches == (16,)  # text from a command line or a KFP parameter, parsed once
    result = steps.transfer(req, off())
    assert models.load_bundle(tmp_path / "gr" / "model.pt").labels == GREEK
    assert result.metrics["transfer"]["subset"] == "g" and result.summary[0]["subset"] == "g"


def test_requests_refuse_bad_values_by_name():
    with pytest.raises(steps.StepError, match="lrs"):
        steps.TransferRequest(model="m.pt", features="f.npz", out="o", lrs="abc")
    with pytest.raises(steps.StepError, match="cv_folds"):
        steps.TransferRequest(model="m.pt", features="f.npz", out="o", cv_folds=1)
    with pytest.raises(steps.StepError, match="seeds"):
        steps.TrainRequest(features="f.npz", out="o", seeds=0)


def test_a_request_declares_its_flags_and_its_json_once():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, steps.TrainRequest)
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    assert {"features", "out", "split", "test_size", "checkpoint", "seeds", "keep_checkpoint"} <= set(flags)
    assert "config" not in flags and "register" not in flags  # cli=False: the command adds its own form
    assert all(a.help for a in flags.values()) and flags["split"].choices == steps.SPLITS
    args = parser.parse_args(["--features", "f.npz", "--out", "o", "--split", "speaker", "--seeds", "2", "--keep-checkpoint"])
    req = settings.from_args(steps.TrainRequest, args, device="cpu")
    assert req.split == "speaker" and req.seeds == 2 and req.keep_checkpoint and req.test_size == 0.2
    back = steps.TrainRequest.from_dict(json.loads(json.dumps(req.to_dict(), default=str)))
    assert back == req and isinstance(back.features, Path)


@pytest.mark.integration
def test_publish_is_a_library_call_with_the_store_passed_in(data, tmp_path, s3_server):  # noqa: F811
    """A version is archived (.mar, KServe layout, model.pt, metrics.json) through the
    store the caller gives; not promoted, the serving copy is not touched."""
    _, english, _ = data
    steps.train(steps.TrainRequest(features=english, out=tmp_path / "model", config=TINY, device="cpu", progress=False), off())
    store = s3_server.store()
    store.ensure_bucket("steps-models")
    req = steps.PublishRequest(model_dir=tmp_path / "model", bucket="steps-models", name="steps-test", out=tmp_path / "pub",
                               version="v1")
    info = steps.publish(req, store).info
    keys = {k for k, _ in store.list("steps-models", "steps-test/")}
    assert info["uri"] == "s3://steps-models/steps-test/versions/v1" and not info["promoted"]
    assert {"steps-test/versions/v1/model.pt", "steps-test/versions/v1/metrics.json",
            "steps-test/versions/v1/model-store/steps-test.mar"} <= keys
    assert not any(k.startswith("steps-test/champion/") for k in keys)
    assert json.loads((tmp_path / "pub" / "published.json").read_text())["metrics"]["accuracy"] == pytest.approx(
        json.loads((tmp_path / "model" / "metrics.json").read_text())["accuracy"])
    with pytest.raises(steps.StepError, match="no model.pt"):
        steps.publish(req.with_(model_dir=tmp_path / "nowhere"), store)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A synthetic RAVDESS-layout corpus with one corrupt file among its recordings."""
    from ser.data.corpora import synthetic

    root = tmp_path_factory.mktemp("corpus") / "synth"
    synthetic.generate(root, per_class=2, speakers=2)
    (root / "Actor_01" / "03-01-05-01-01-09-01.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    return root


def test_ingest_is_a_library_call_that_lists_what_it_could_not_use(corpus, tmp_path):
    result = steps.ingest(steps.IngestRequest(corpus=(f"synthetic={corpus}",), out=tmp_path / "t.csv", progress=False))
    assert len(result.rows) == 14 and len(result.problems) == 1
    with result.problems_path.open(encoding="utf-8") as f:
        listed = list(csv.DictReader(f))
    assert listed[0]["path"].endswith("03-01-05-01-01-09-01.wav") and listed[0]["reason"]
    columns, counts = result.counts()
    assert columns == ["emotion", "synthetic-ravdess", "total"] and counts[-1]["total"] == 14
    with result.table.open(encoding="utf-8") as f:
        assert all(Path(r["path"]).is_absolute() for r in csv.DictReader(f))


def test_ingest_writes_paths_relative_to_the_table_when_asked(corpus, tmp_path):
    """A pipeline artifact moves between steps: its table names files relative to itself,
    and featurize resolves them against the folders it is given."""
    import shutil

    moved = tmp_path / "artifact"
    shutil.copytree(corpus, moved / "synth")
    table = moved / "table.csv"
    steps.ingest(steps.IngestRequest(corpus=(f"synthetic={moved / 'synth'}",), out=table, relative=True, progress=False))
    with table.open(encoding="utf-8") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    assert paths and all(p.startswith("synth/") for p in paths)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(moved, elsewhere)  # the artifact as the next step sees it
    req = steps.FeaturizeRequest(table=elsewhere / "table.csv", out=tmp_path / "sets", size=30, labels="english",
                                 cache=tmp_path / "cache", workers=1, roots=(elsewhere,), progress=False)
    (tmp_path / "sets").mkdir()
    result = steps.featurize(req)
    assert result.path == tmp_path / "sets" / "mel-30.npz" and len(result.features) == 14
    assert result.problems_path.is_file()
    with pytest.raises(steps.StepError, match="found under none"):
        steps.featurize(req.with_(roots=(tmp_path,)))


def test_ingest_and_featurize_refuse_bad_requests_with_a_reason(corpus, tmp_path):
    with pytest.raises(steps.StepError, match="nosuch"):
        steps.IngestRequest(corpus=(f"nosuch={corpus}",), out=tmp_path / "t.csv")
    with pytest.raises(steps.StepError, match="not found"):
        steps.ingest(steps.IngestRequest(corpus=(f"ravdess={tmp_path / 'absent'}",), out=tmp_path / "t.csv", progress=False))
    table = steps.ingest(steps.IngestRequest(corpus=(f"synthetic={corpus}",), out=tmp_path / "t.csv", progress=False)).table
    with table.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["emotion"] not in GREEK]  # neutral and surprise: not AESDD's classes
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(steps.StepError, match="no usable rows .* greek"):
        steps.featurize(steps.FeaturizeRequest(table=table, out=tmp_path / "g.npz", size=30, labels="greek",
                                               cache=tmp_path / "cache", workers=1, progress=False))
    with pytest.raises(steps.StepError, match="table not found"):
        steps.featurize(steps.FeaturizeRequest(table=tmp_path / "none.csv", out=tmp_path / "g.npz", progress=False))
    with pytest.raises(steps.StepError, match="unknown feature"):
        steps.FeaturizeRequest(table=table, out=tmp_path / "g.npz", feature="cqt")
