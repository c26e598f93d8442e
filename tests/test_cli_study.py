"""`ser train`, `ser evaluate`, `ser transfer`, `ser predict` end to end on tiny data."""

from __future__ import annotations

import argparse
import csv
import json
import types

import numpy as np
import pytest
import soundfile as sf

from ser.study import models
from ser.cli import run
from ser.cli import build_parser as full_parser
from ser.cli import study
from ser.data.features import FeatureSpec
from ser.data.labels import ENGLISH, GREEK
from tests.helpers import banded_feature_set

SPEC = FeatureSpec(kind="mel", size=30, sample_rate=16000)
TINY_YAML = """
arch:
  cnn: squirtle
  conv_channels: [8, 8, 8]
  fc_features: [32, 32]
  dropout: 0.25
train:
  batch_size: 16
  lr: 0.002
  epochs: 3
"""
FAST = ["--device", "cpu", "--threads", "1", "--no-progress"]


def build_parser() -> argparse.ArgumentParser:
    """The study group alone, so these tests do not depend on other command groups."""
    parser = argparse.ArgumentParser(prog="ser")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    study.register(sub)
    return parser


def main(argv: list[str]) -> int:
    """As ser.cli.main, with the study group alone."""
    return run(build_parser().parse_args(argv))


feature_set = banded_feature_set


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    english = feature_set(ENGLISH, 140).save(root / "english.npz")
    greek = feature_set(GREEK, 60, seed=1).save(root / "greek.npz")
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML)
    out = root / "train"
    assert main(["train", "--features", str(english), "--config", str(config), "--split", "speaker", "--seed", "4", "--out", str(out), *FAST]) == 0
    return types.SimpleNamespace(root=root, english=english, greek=greek, config=config, model_dir=out)


def test_commands_are_registered_in_the_ser_parser(capsys):
    parser = full_parser()  # a broken import anywhere in ser.cli fails here, as it would for a user
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    top = capsys.readouterr().out
    for command in ("train", "evaluate", "transfer", "predict"):
        assert command in top


def test_help_explains_every_command_and_option(capsys):
    parser = build_parser()
    expected = {"train": {"--device"}, "evaluate": {"--device", "--model"}, "transfer": {"--device", "--model"}, "predict": {"--model"}}
    for command, options in expected.items():
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        missing = {o for o in options if o not in text}
        assert not missing, f"`ser {command} --help` does not mention {sorted(missing)}"
    # Every option carries help text.
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in ("train", "evaluate", "transfer", "predict"):
        for action in sub.choices[command]._actions:
            assert action.help, f"{command} {action.option_strings} has no help"


def test_train_writes_the_contract_files(work):
    out = work.model_dir
    for name in ("model.pt", "metrics.json", "learning_curve.png", "confusion_matrix.png", "improvements.md", "improvements.csv", "history.csv", "config.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "best_epoch", "seed", "split"):
        assert key in metrics
    assert metrics["seed"] == 4 and metrics["split"] == "speaker" and metrics["sizes"]["shared_speakers"] == 0
    assert set(metrics["per_class"]) == set(ENGLISH) and 1 <= metrics["best_epoch"] <= 3
    bundle = models.load_bundle(out / "model.pt")
    assert bundle.labels == ENGLISH and bundle.arch.in_size == 30 and bundle.arch.conv_channels == (8, 8, 8)
    assert bundle.meta["seed"] == 4 and bundle.meta["split"] == "speaker" and bundle.meta["config_hash"] == metrics["config_hash"]
    assert FeatureSpec.from_dict(bundle.feature_spec) == SPEC
    assert (out / "improvements.md").read_text().count("\n| ") >= 1


def test_train_with_seeds_summarises_and_skips_finished_runs(work, capsys):
    out = work.root / "seeds"
    args = ["train", "--features", str(work.english), "--config", str(work.config), "--epochs", "2", "--seeds", "2", "--out", str(out), *FAST]
    assert main(args) == 0
    for seed in (0, 1):
        assert (out / f"seed-{seed}" / "metrics.json").is_file() and (out / f"seed-{seed}" / "model.pt").is_file()
    summary = json.loads((out / "seeds.json").read_text())["summary"]
    assert summary["n"] == 2 and summary["seeds"] == [0, 1] and "std" in summary["accuracy"]
    assert (out / "seeds.md").read_text().count("| mean |") == 1
    top = json.loads((out / "metrics.json").read_text())
    assert top["seed"] == 0 and top["seeds_summary"]["n"] == 2 and (out / "model.pt").is_file()
    capsys.readouterr()
    assert main(args) == 0  # a finished run is not trained again
    assert capsys.readouterr().err.count("skipping") == 2


def test_train_user_errors(work, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: {cnn: squirtle, colour: blue}\n")
    wrong_size = tmp_path / "size.json"
    wrong_size.write_text(json.dumps({"arch": {"in_size": 60, "conv_channels": [8, 8, 8], "fc_features": [8, 8]}}))
    tiny_pool = tmp_path / "pool.json"
    tiny_pool.write_text(json.dumps({"arch": {"conv_channels": [4, 4, 4], "fc_features": [8, 8], "pool_kernels": [3, 3, 3], "pool_strides": [4, 4, 4]}}))
    cases = [
        (["--features", str(tmp_path / "missing.npz"), "--config", str(work.config)], "does not exist"),
        (["--features", str(work.config), "--config", str(work.config)], "not a feature set"),
        (["--features", str(work.english), "--config", str(tmp_path / "none.yaml")], "does not exist"),
        (["--features", str(work.english), "--config", str(bad)], "colour"),
        (["--features", str(work.english), "--config", str(wrong_size)], "30x30"),
        (["--features", str(work.english), "--config", str(tiny_pool)], "pool"),
        (["--features", str(work.english), "--preset", "nope"], "unknown preset"),
        (["--features", str(work.english), "--config", str(work.config), "--epochs", "0"], "epochs"),
    ]
    for extra, message in cases:
        assert main(["train", *extra, "--out", str(tmp_path / "o"), *FAST]) == 2, extra
        err = capsys.readouterr().err
        assert "ser train: error:" in err and message in err, (extra, err)


def test_evaluate_writes_metrics_and_plots(work, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(work.model_dir), "--features", str(work.english), "--rows", "test", "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    trained = json.loads((work.model_dir / "metrics.json").read_text())
    # --rows test re-creates the training run's test split from the bundle's metadata.
    assert metrics["n"] == trained["n"] and metrics["accuracy"] == pytest.approx(trained["accuracy"])
    assert metrics["split"] == "speaker" and metrics["seed"] == 4
    assert (out / "confusion_matrix.png").is_file() and (out / "per_class.md").is_file()
    assert len((out / "predictions.csv").read_text().splitlines()) == metrics["n"] + 1
    # The model may come from $SER_MODEL.
    monkeypatch.setenv("SER_MODEL", str(work.model_dir / "model.pt"))
    assert main(["evaluate", "--features", str(work.english), "--out", str(tmp_path / "all"), *FAST]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["n"] == 140


def test_evaluate_user_errors(work, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SER_MODEL", raising=False)
    assert main(["evaluate", "--features", str(work.english), "--out", str(tmp_path), *FAST]) == 2
    assert "no model given" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--features", str(work.english), "--out", str(tmp_path), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(work.model_dir), "--features", str(work.greek), "--out", str(tmp_path), *FAST]) == 2
    assert "labelled" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert main(["evaluate", "--model", str(junk), "--features", str(work.english), "--out", str(tmp_path), *FAST]) == 2
    assert "cannot load model bundle" in capsys.readouterr().err


@pytest.fixture(scope="module")
def greek_table(tmp_path_factory):
    """A small synthetic AESDD-style corpus (5 Greek classes, all in the English set) as a
    table, one of its files damaged after the scan."""
    from ser.cli import main as full_main
    from ser.data.corpora import synthetic

    root = tmp_path_factory.mktemp("greek")
    files = synthetic.generate(root / "corpus", "aesdd", per_class=4, speakers=2, seed=3)
    assert full_main(["ingest", "--corpus", f"synthetic={root / 'corpus'}", "--out", str(root / "t.csv"), "--no-progress"]) == 0
    files[0].write_bytes(b"RIFF....WAVEfmt garbage")
    return root / "t.csv", files[0]


def test_evaluate_on_another_corpus_scores_the_classes_both_know(work, greek_table, tmp_path, capsys):
    """`ser evaluate --table`: the recordings get the model's own features; --shared-classes
    scores an English model on a Greek corpus over the five emotions both have: the
    prediction is the most likely of those five, and the damaged file is named, not fatal."""
    from sklearn.metrics import balanced_accuracy_score

    table, damaged = greek_table
    args = ["evaluate", "--model", str(work.model_dir), "--table", str(table), "--cache", str(tmp_path / "cache"), *FAST]
    assert main([*args, "--out", str(tmp_path / "all")]) == 0
    err = capsys.readouterr().err
    assert "left out 1 rows: could not be read" in err and str(damaged) in err
    whole = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert whole["n"] == 19 and whole["labels"] == list(ENGLISH) and "classes" not in whole
    assert whole["rows_left_out"] == {"could not be read": 1}
    assert main([*args, "--shared-classes", "--out", str(tmp_path / "shared")]) == 0
    assert "19 rows over happy, angry, disgust, fearful, sad: UA" in capsys.readouterr().out
    shared = json.loads((tmp_path / "shared" / "metrics.json").read_text())
    five = ["happy", "angry", "disgust", "fearful", "sad"]
    assert shared["classes"] == five and shared["outputs_ignored"] == ["neutral", "surprised"] and shared["labels"] == five
    rows = list(csv.DictReader((tmp_path / "all" / "predictions.csv").open()))
    restricted = list(csv.DictReader((tmp_path / "shared" / "predictions.csv").open()))
    assert [r["source_id"] for r in rows] == [r["source_id"] for r in restricted]
    expected = [max(five, key=lambda name: float(r[f"p_{name}"])) for r in rows]
    assert [r["predicted"] for r in restricted] == expected
    assert shared["ua"] == pytest.approx(balanced_accuracy_score([r["true"] for r in rows], expected))
    # The table read with the corpus's own label set: the labels differ, so only --shared-classes scores it.
    assert main([*args, "--labels", "greek", "--out", str(tmp_path / "greek")]) == 2
    assert "--shared-classes" in capsys.readouterr().err
    assert main([*args, "--labels", "greek", "--shared-classes", "--out", str(tmp_path / "greek")]) == 0
    assert json.loads((tmp_path / "greek" / "metrics.json").read_text())["ua"] == pytest.approx(shared["ua"])


def test_evaluate_takes_one_source(work, greek_table, tmp_path, capsys):
    table, _ = greek_table
    model = ["evaluate", "--model", str(work.model_dir), "--out", str(tmp_path), *FAST]
    for extra, message in (([], "exactly one"), (["--table", str(table), "--features", str(work.english)], "exactly one"),
                           (["--features", str(work.english), "--labels", "greek"], "--labels chooses")):
        assert main([*model, *extra]) == 2, extra
        assert message in capsys.readouterr().err


def test_mlflow_uris_go_through_models_uri(work, tmp_path, monkeypatch, capsys):
    from ser.cli import study

    from ser.adapters import models_uri

    calls = []
    monkeypatch.setattr(models_uri, "resolve", lambda uri: calls.append(uri) or work.model_dir / "model.pt")
    assert study.resolve_model_path("models:/ser-english@champion") == work.model_dir / "model.pt"
    assert main(["evaluate", "--model", "runs:/abc/model", "--features", str(work.english), "--out", str(tmp_path), *FAST]) == 0
    assert calls == ["models:/ser-english@champion", "runs:/abc/model"]
    monkeypatch.setattr(models_uri, "resolve", lambda uri: (_ for _ in ()).throw(LookupError("no such model")))
    assert main(["evaluate", "--model", "models:/x/1", "--features", str(work.english), "--out", str(tmp_path), *FAST]) == 2
    assert "no such model" in capsys.readouterr().err


def test_transfer_grid_end_to_end(work, tmp_path, capsys):
    out = tmp_path / "transfer"
    args = ["transfer", "--model", str(work.model_dir), "--features", str(work.greek), "--freeze", "a,g", "--lrs", "1e-3,3e-3",
            "--batches", "16", "--epochs", "2", "--eval-every", "1", "--scratch", "--scratch-lrs", "1e-3", "--out", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| a |" in printed and "scratch" in printed and "best run" in printed
    assert len((out / "runs.csv").read_text().splitlines()) == 1 + 5
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("subset,frozen,runs,mean_accuracy") and len(summary) == 4
    bundle = models.load_bundle(out / "model.pt")
    assert bundle.labels == GREEK and bundle.arch.n_classes == 5
    assert bundle.meta["transfer"]["subset"] in ("a", "g", "scratch")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(GREEK) and (out / "learning_curve.png").is_file()
    # Bad subset and size mismatch are refused before any training.
    assert main([*args[:5], "--freeze", "x", "--out", str(out), *FAST]) == 2
    assert "subset" in capsys.readouterr().err
    assert main(["transfer", "--model", str(work.model_dir), "--features", str(work.greek), "--lrs", "abc", "--out", str(out), *FAST]) == 2
    assert "--lrs" in capsys.readouterr().err


def test_predict_prints_probabilities_per_file(work, tmp_path, capsys):
    rate = 16000
    t = np.arange(rate) / rate
    good = tmp_path / "tone.wav"
    sf.write(good, (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(rate)).astype(np.float32), rate)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio")
    threads = ["--threads", "1"]
    assert main(["predict", str(good), "--model", str(work.model_dir), *threads]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{good}: ") and all(name in line for name in ENGLISH)
    probs = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ", 1)[1].split(", ")]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=0.01)
    assert main(["predict", str(good), str(bad), "--model", str(work.model_dir), "--json", *threads]) == 1
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip())
    assert record["file"] == str(good) and record["label"] in ENGLISH
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert "bad.wav: cannot predict" in captured.err


def test_predict_timeline_gives_an_emotion_per_window(work, tmp_path, capsys):
    """A long recording: one line per sliding window, silent windows marked."""
    rate = 16000
    t = np.arange(3 * rate) / rate
    voiced = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([voiced, np.zeros(2 * rate, np.float32), voiced]), rate)
    assert main(["predict", str(long), "--model", str(work.model_dir), "--timeline", "--window", "1", "--hop", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    segments = record["segments"]
    assert len(segments) == 8 and segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(8.0)
    assert [s["silent"] for s in segments] == [False] * 3 + [True] * 2 + [False] * 3
    assert all(s["label"] in ENGLISH for s in segments if not s["silent"])
    assert main(["predict", str(long), "--model", str(work.model_dir), "--timeline", "--window", "2", "--hop", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{long}: ") and len(lines) == 1 + 4 and "(silence)" not in lines[1]


def test_train_on_the_rows_a_search_held_out(work, tmp_path, capsys):
    """`ser train --held-out search.json`: the test rows are the search's held-out
    sources, whatever split the flags would have drawn; a search.json without them
    is a clear error."""
    from ser.study import search
    from ser.data.dataset import FeatureSet

    fs = FeatureSet.load(work.english)
    _, desc = search.search_split({("mel", 30): fs}, "random", 7, 0.25)
    search_json = tmp_path / "search.json"
    search_json.write_text(json.dumps({"split": desc}))
    out = tmp_path / "final"
    assert main(["train", "--features", str(work.english), "--config", str(work.config), "--held-out", str(search_json),
                 "--epochs", "1", "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"]["test_rows"] == len(desc["test_source_ids"]) == round(0.25 * len(fs))
    assert metrics["sizes"]["train_rows"] == desc["rows"]["mel-30"]["train_rows"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"split": {"protocol": "random"}}))
    capsys.readouterr()
    assert main(["train", "--features", str(work.english), "--config", str(work.config), "--held-out", str(bad),
                 "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "test_source_ids" in capsys.readouterr().err


def test_transfer_scored_by_cross_validation_then_one_final_model(work, tmp_path, capsys):
    """--cv-folds: cells scored on the training side, the best one trained for
    --final-epochs and tested once."""
    import csv

    out = tmp_path / "cv"
    args = ["transfer", "--model", str(work.model_dir), "--features", str(work.greek), "--freeze", "g", "--lrs", "1e-3,3e-3",
            "--batches", "16", "--epochs", "2", "--eval-every", "1", "--cv-folds", "2", "--final-epochs", "3", "--out", str(out), *FAST]
    assert main(args) == 0
    with open(out / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 2 and {r["scored_on"] for r in runs} == {"2-fold CV"}
    chosen = max(runs, key=lambda r: (float(r["accuracy"]), float(r["macro_f1"])))
    bundle = models.load_bundle(out / "model.pt")
    assert bundle.meta["transfer"]["lr"] == pytest.approx(float(chosen["lr"]))
    assert bundle.meta["transfer"]["scored_on"] == "test" and bundle.meta["transfer"]["epochs"] == 3  # the final model
    assert "cross-validated" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main([*args[:-len(FAST) - 2], "--cv-folds", "1", "--out", str(tmp_path / "bad"), *FAST]) == 2
    assert "--cv-folds" in capsys.readouterr().err


def test_train_chooses_its_checkpoint_on_validation_speakers_unless_told_the_study_rule(work, tmp_path, capsys):
    """Default: the kept epoch is chosen on validation rows carved (whole speakers) from
    the training side, and the test rows are only scored; --checkpoint test is the
    study's rule, and says its score is optimistic."""
    from ser.study import splits
    from ser.data.dataset import FeatureSet

    english = work.english
    fs = FeatureSet.load(english)
    out = tmp_path / "val"
    assert main(["train", "--features", str(english), "--config", str(work.config), "--split", "speaker", "--seed", "4",
                 "--out", str(out), *FAST]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["checkpoint"] == "validation" and "ua" in data and 0 <= data["ua"] <= 1
    train_idx, test_idx = splits.train_test(fs, 0.2, seed=4, protocol="speaker")
    fit_idx, val_idx = splits.validation_split(fs, train_idx, 0.2, seed=4)
    assert data["sizes"]["val_rows"] == len(val_idx) and data["sizes"]["fit_rows"] == len(fit_idx)
    keys = splits.speaker_keys(fs)
    assert not set(keys[val_idx]) & set(keys[test_idx]) and not set(keys[val_idx]) & set(keys[fit_idx])
    assert "optimistic" not in capsys.readouterr().out
    study_out = tmp_path / "study"
    assert main(["train", "--features", str(english), "--config", str(work.config), "--split", "speaker", "--seed", "4",
                 "--checkpoint", "test", "--out", str(study_out), *FAST]) == 0
    assert "optimistic" in capsys.readouterr().out
    study_data = json.loads((study_out / "metrics.json").read_text())
    assert study_data["checkpoint"] == "test" and "optimistic" in study_data["checkpoint_note"]
    assert study_data["config_hash"] != data["config_hash"]
