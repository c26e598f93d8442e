"""The data commands as a user runs them: synth -> ingest -> augment -> features."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ser.cli import main
from ser.data.dataset import FeatureSet
from tests.servers import s3_env, s3_server  # noqa: F401  (real SeaweedFS fixtures)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_synthetic_corpus_to_feature_file(tmp_path, capsys):
    corpus, table, feats = tmp_path / "synth", tmp_path / "t.csv", tmp_path / "f.npz"
    assert main(["synth", "--out", str(corpus), "--per-class", "3", "--speakers", "2"]) == 0
    (corpus / "Actor_01" / "03-01-05-01-01-09-01.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    assert main(["ingest", "--corpus", f"synthetic={corpus}", "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "1 files not used" in out
    problems = _rows(table.with_suffix(".problems.csv"))
    assert problems[0]["path"].endswith("03-01-05-01-01-09-01.wav") and problems[0]["reason"]
    assert main(["features", "--table", str(table), "--size", "30", "--out", str(feats),
                 "--cache", str(tmp_path / "cache"), "--workers", "1"]) == 0
    fs = FeatureSet.load(feats)
    assert len(fs) == 21 and fs.images.shape[1:] == (30, 30)
    assert set(fs.class_counts().values()) == {3}
    assert all(c.startswith("synthetic") for c in fs.corpus)
    # second run: everything from the cache
    assert main(["features", "--table", str(table), "--size", "30", "--out", str(feats),
                 "--cache", str(tmp_path / "cache"), "--workers", "1"]) == 0
    assert "0 computed, 21 from cache" in capsys.readouterr().out


def test_augment_adds_copies_that_follow_their_source(tmp_path, capsys):
    corpus, table = tmp_path / "synth", tmp_path / "t.csv"
    main(["synth", "--out", str(corpus), "--per-class", "2", "--speakers", "1"])
    main(["ingest", "--corpus", f"synthetic={corpus}", "--out", str(table)])
    corpus_name = _rows(table)[0]["corpus"]
    aug = tmp_path / "aug.csv"
    assert main(["augment", "--table", str(table), "--corpora", corpus_name, "--mode", "add", "--copies", "1",
                 "--audio-dir", str(tmp_path / "aug"), "--out", str(aug)]) == 0
    rows = _rows(aug)
    originals = {r["sha256"] for r in rows if not r["augmented_from"]}
    copies = [r for r in rows if r["augmented_from"]]
    assert len(copies) == len(originals) == 14
    assert {r["augmented_from"] for r in copies} == originals
    feats = tmp_path / "f.npz"
    assert main(["features", "--table", str(aug), "--size", "30", "--out", str(feats), "--workers", "1",
                 "--cache", str(tmp_path / "c")]) == 0
    fs = FeatureSet.load(feats)
    assert (fs.augment == "add").sum() == 14 and set(fs.group[fs.augment == "add"]) == originals


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["ingest", "--corpus", "nosuch=" + str(tmp_path), "--out", str(tmp_path / "t.csv")]) == 2
    assert "unknown corpus 'nosuch'" in capsys.readouterr().err
    assert main(["ingest", "--corpus", "tess=" + str(tmp_path / "missing"), "--out", str(tmp_path / "t.csv")]) == 2
    assert "corpus folder not found" in capsys.readouterr().err
    assert main(["features", "--table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "f.npz")]) == 2
    assert "table not found" in capsys.readouterr().err


def test_help_explains_every_data_command(capsys):
    for command in ("synth", "ingest", "augment", "features"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--out" in text and len(text) > 400


@pytest.mark.integration
def test_real_tess_ingest_and_features(tess_dir, tmp_path, capsys):
    """The whole real TESS: every file a row or a reported problem; features for a sample."""
    table = tmp_path / "tess.csv"
    assert main(["ingest", "--corpus", f"tess={tess_dir}", "--out", str(table)]) == 0
    rows = _rows(table)
    problems = _rows(table.with_suffix(".problems.csv"))
    assert len(rows) + len(problems) == 2800
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["YAF_germ_angry.wav"]["container"] == "AIFF"
    assert by_name["OAF_back_angry.wav"]["sample_rate"] == "44100"
    assert by_name["OAF_food_fear.flac"]["sample_rate"] == "96000"
    study = tmp_path / "study.csv"
    assert main(["ingest", "--corpus", f"tess={tess_dir}", "--select", "study", "--out", str(study)]) == 0
    assert len(_rows(study)) == 2798
    sample = tmp_path / "sample.csv"
    picked = [r for i, r in enumerate(rows) if i % 40 == 0] + [by_name["YAF_germ_angry.wav"], by_name["OAF_food_fear.flac"]]
    with open(sample, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    feats = tmp_path / "f.npz"
    assert main(["features", "--table", str(sample), "--out", str(feats), "--cache", str(tmp_path / "c")]) == 0
    fs = FeatureSet.load(feats)
    assert len(fs) == len(picked) and np.isfinite(fs.images).all()
    assert set(fs.speaker) == {"tess-OAF", "tess-YAF"}


@pytest.mark.integration
def test_upload_puts_a_corpus_where_ingest_reads_it(s3_env, s3_server, tmp_path, capsys):
    corpus = tmp_path / "synth"
    main(["synth", "--out", str(corpus), "--per-class", "1", "--speakers", "1"])
    assert main(["upload", str(corpus), "s3://ser-upload-test/corpora/synthetic"]) == 0
    assert "uploaded 8 files" in capsys.readouterr().out  # 7 recordings + the SYNTHETIC.txt marker
    keys = {key for key, _ in s3_server.store().list("ser-upload-test", "corpora/synthetic")}
    assert "corpora/synthetic/SYNTHETIC.txt" in keys and len(keys) == 8
    assert main(["upload", str(tmp_path / "missing"), "s3://ser-upload-test/x"]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["upload", str(corpus), "not-a-uri"]) == 2
    assert "not an S3 URI" in capsys.readouterr().err


def test_features_resample_to_16_khz_unless_told_native(tmp_path, capsys):
    corpus, table = tmp_path / "synth", tmp_path / "t.csv"
    assert main(["synth", "--out", str(corpus), "--per-class", "1", "--speakers", "1", "--rate", "22050"]) == 0
    assert main(["ingest", "--corpus", f"synthetic={corpus}", "--out", str(table)]) == 0
    common = ["features", "--table", str(table), "--size", "30", "--cache", str(tmp_path / "cache"), "--workers", "1"]
    assert main([*common, "--out", str(tmp_path / "f.npz")]) == 0
    assert FeatureSet.load(tmp_path / "f.npz").spec.sample_rate == 16000
    assert main([*common, "--rate", "native", "--out", str(tmp_path / "n.npz")]) == 0
    native = FeatureSet.load(tmp_path / "n.npz")
    assert native.spec.sample_rate is None
    assert not np.allclose(native.images, FeatureSet.load(tmp_path / "f.npz").images)
    with pytest.raises(SystemExit):
        main([*common, "--rate", "fast", "--out", str(tmp_path / "x.npz")])
    assert "expected a rate in Hz or 'native'" in capsys.readouterr().err
