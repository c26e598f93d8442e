import sys

import numpy as np
import pytest
import soundfile as sf

from ser.data import dataset
from ser.data.audio import sha256_file
from ser.data.features import FeatureSpec
from tests.helpers import tone


@pytest.fixture
def table(tmp_path):
    rows = []
    for i, emotion in enumerate(["happy", "sad", "angry", "calm"]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, tone(freq=150 + 50 * i, seed=i), 16000)
        rows.append({"path": str(path), "sha256": sha256_file(path), "emotion": emotion, "speaker": f"s{i % 2}", "corpus": "x"})
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    rows.append({"path": str(bad), "sha256": sha256_file(bad), "emotion": "sad", "speaker": "s0", "corpus": "x"})
    return rows


def test_build_reports_bad_and_out_of_set_rows_and_keeps_the_rest(table, tmp_path):
    spec = FeatureSpec(size=30)
    fs, report = dataset.build(table, spec, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert len(fs) == 3 and fs.images.shape == (3, 30, 30)
    reasons = dict(report.problems)
    assert "not a readable audio file" in reasons[table[4]["path"]]
    assert "calm" in reasons[table[3]["path"]]
    assert [fs.label_names[i] for i in fs.labels] == ["happy", "sad", "angry"]
    assert list(fs.group) == list(fs.source_id) and fs.is_original.all()


def test_second_run_is_served_from_cache(table, tmp_path):
    spec = FeatureSpec(size=30)
    first, r1 = dataset.build(table, spec, cache_dir=tmp_path / "c", workers=1, progress=False)
    second, r2 = dataset.build(table, spec, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert r1.computed == 4 and r2.cached == 3 and r2.computed == 1  # only the broken file is retried
    assert np.array_equal(first.images, second.images)


@pytest.mark.parametrize("torch_loaded", [False, True], ids=["fork", "spawn"])
def test_parallel_workers_agree_with_serial_and_fill_the_cache(table, tmp_path, monkeypatch, torch_loaded):
    rows = table[:3] * 12  # > 32 rows, so the process pool is used
    spec = FeatureSpec(size=30)
    serial, _ = dataset.build(rows, spec, workers=1, progress=False)
    if torch_loaded:
        monkeypatch.setitem(sys.modules, "torch", object())
    else:
        monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert dataset._pool_context(spec).get_start_method() == ("spawn" if torch_loaded else "fork")
    parallel, report = dataset.build(rows, spec, cache_dir=tmp_path / "c", workers=2, progress=False)
    assert report.computed == 36 and np.array_equal(serial.images, parallel.images)
    again, report = dataset.build(rows, spec, cache_dir=tmp_path / "c", workers=2, progress=False)
    assert report.computed == 0 and np.array_equal(again.images, serial.images)  # workers wrote the cache


def test_save_load_subset_concat(table, tmp_path):
    fs, _ = dataset.build(table, FeatureSpec(size=30), workers=1, progress=False)
    path = fs.save(tmp_path / "f.npz")
    back = dataset.FeatureSet.load(path)
    assert np.array_equal(back.images, fs.images) and back.spec == fs.spec and back.label_names == fs.label_names
    part = back.subset([2, 0])
    assert list(part.labels) == [fs.labels[2], fs.labels[0]]
    assert len(dataset.FeatureSet.concat([part, back])) == 5
    with pytest.raises(ValueError, match="not a feature set"):
        dataset.FeatureSet.load(table[4]["path"])


def test_keep_classes_relabels_to_the_given_order_and_drops_the_rest(table):
    fs, _ = dataset.build(table, FeatureSpec(size=30), workers=1, progress=False)  # happy, sad, angry
    part = fs.keep_classes(("sad", "neutral", "happy"))
    assert part.label_names == ("sad", "neutral", "happy") and len(part) == 2
    assert [part.label_names[i] for i in part.labels] == ["happy", "sad"]
    assert np.array_equal(part.images[1], fs.images[1]) and list(part.source_id) == [fs.source_id[0], fs.source_id[1]]
    assert len(fs.keep_classes(("fearful",))) == 0


def test_augmented_rows_carry_their_group(table):
    src = table[0]
    copy = {**src, "sha256": "copyhash", "augmented_from": src["sha256"], "augment": "replace"}
    fs, _ = dataset.build([src, copy], FeatureSpec(size=30), workers=1, progress=False)
    assert list(fs.group) == [src["sha256"], src["sha256"]]
    assert list(fs.augment) == ["", "replace"]


def test_damaged_cache_shard_is_recomputed_not_fatal(table, tmp_path):
    spec = FeatureSpec(size=30)
    first, _ = dataset.build(table, spec, cache_dir=tmp_path / "c", workers=1, progress=False)
    shards = list((tmp_path / "c").rglob("*.npz"))
    assert shards and not list((tmp_path / "c").rglob("*.tmp*"))  # written whole, then renamed
    for shard in shards:
        shard.write_bytes(b"PK\x03\x04 truncated")
    again, report = dataset.build(table, spec, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert report.cached == 0 and report.computed == 4
    assert np.array_equal(first.images, again.images)


def test_failed_cache_write_warns_and_keeps_the_images(table, tmp_path, monkeypatch):
    def disk_full(self, keys, images):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset.FeatureCache, "put", disk_full)
    with pytest.warns(UserWarning, match="feature cache not written.*No space left"):
        fs, report = dataset.build(table, FeatureSpec(size=30), cache_dir=tmp_path / "c", workers=1, progress=False)
    assert len(fs) == 3 and report.computed == 4
