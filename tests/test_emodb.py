"""The EmoDB parser (ser.data.corpora.emodb) and the label sets that choose a run's classes."""

import pytest

from ser.data import labels
from ser.data.corpora import CORPORA, emodb, scan


@pytest.mark.parametrize("name, emotion, speaker, gender, text", [
    ("wav/03a01Fa.wav", "happy", "03", "male", "a01"),
    ("wav/08b10Lc.flac", "boredom", "08", "female", "b10"),
    ("16a05Wa.wav", "angry", "16", "female", "a05"),
    ("wav/11b03Ea.wav", "disgust", "11", "male", "b03"),
    ("wav/13a02Ab.wav", "fearful", "13", "female", "a02"),
    ("wav/15a04Tc.wav", "sad", "15", "male", "a04"),
    ("wav/09b02Na.wav", "neutral", "09", "female", "b02"),
])
def test_names_give_emotion_speaker_gender_and_text(name, emotion, speaker, gender, text):
    parsed = emodb.parse_name(name)
    assert (parsed.emotion, parsed.speaker, parsed.gender, parsed.text) == (emotion, speaker, gender, text)


def test_foreign_names_and_unknown_letters():
    assert emodb.parse_name("wav/03-01-05-01-01-01-03.wav") is None  # a RAVDESS name
    assert emodb.parse_name("wav/README.wav") is None
    with pytest.raises(ValueError, match="letter 'X'"):
        emodb.parse_name("wav/03a01Xa.wav")
    assert CORPORA["emodb"] is emodb


def test_label_sets_choose_the_classes_a_run_keeps():
    assert labels.label_set("emodb") == ("angry", "boredom", "disgust", "fearful", "happy", "neutral", "sad")
    assert "surprised" not in labels.label_set("emodb") and "boredom" not in labels.label_set("english")
    assert set(labels.label_set("basic6")) <= set(labels.label_set("emodb")) & set(labels.label_set("english"))
    assert labels.canonical("Bored") == "boredom"
    with pytest.raises(ValueError, match="unknown label set"):
        labels.label_set("klingon")


def test_feature_build_keeps_only_the_label_set_and_reports_the_rest(tmp_path):
    from ser.data import dataset
    from ser.data.features import FeatureSpec
    from tests.helpers import tone, wav_bytes

    rows = []
    for i, emotion in enumerate(("boredom", "angry", "surprised")):
        path = tmp_path / f"{i}.wav"
        path.write_bytes(wav_bytes(tone(1.0, freq=200 + 100 * i)))
        rows.append({"path": str(path), "sha256": f"h{i}", "emotion": emotion, "speaker": "s", "corpus": "c"})
    fs, rep = dataset.build(rows, FeatureSpec(size=30), labels="emodb", workers=1, progress=False)
    assert [fs.label_names[i] for i in fs.labels] == ["boredom", "angry"]
    assert [reason for _, reason in rep.problems] == ["emotion 'surprised' not in the emodb label set"]


@pytest.mark.integration
def test_the_real_emodb_copy_scans_to_its_published_counts(emodb_dir):
    result = scan("emodb", emodb_dir)
    assert not result.problems and len(result.rows) == 535
    counts = {}
    for r in result.rows:
        counts[r.emotion] = counts.get(r.emotion, 0) + 1
    assert counts == {"angry": 127, "boredom": 81, "neutral": 79, "happy": 71, "fearful": 69, "sad": 62, "disgust": 46}
    speakers = {r.speaker: r.gender for r in result.rows}
    assert len(speakers) == 10 and sum(g == "female" for g in speakers.values()) == 5
