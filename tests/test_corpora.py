"""ser.data.corpora: file-name parsing, scanning, tables and the study's Table 1 selection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.corpora_trees import MANIFESTS, TABLE1, TESS_AIFF, TESS_DIR, audio_bytes, build_tree, manifest
from ser.data.corpora import (
    CORPORA, Problem, Utterance, aesdd, cremad, ravdess, read_problems, read_table, savee, scan,
    select_study, tess, write_problems, write_table,
)

needs_manifests = pytest.mark.skipif(
    not MANIFESTS.is_dir(), reason=f"corpus manifests not found at {MANIFESTS} (set SER_SHARED_DIR)"
)


# --- names ---------------------------------------------------------------------------

@pytest.mark.parametrize(("rel", "emotion", "speaker", "gender", "text"), [
    ("Actor_01/03-01-05-01-02-01-01.wav", "angry", "01", "male", "Dogs are sitting by the door"),
    ("Actor_24/03-01-08-02-01-02-24.wav", "surprised", "24", "female", "Kids are talking by the door"),
    ("03-01-02-01-01-01-07.wav", "calm", "07", "male", "Kids are talking by the door"),  # flattened
    ("Actor_10/03-01-01-01-01-01-10.WAV", "neutral", "10", "female", "Kids are talking by the door"),
])
def test_ravdess_names(rel: str, emotion: str, speaker: str, gender: str, text: str) -> None:
    p = ravdess.parse_name(rel)
    assert p is not None and (p.emotion, p.speaker, p.gender, p.text) == (emotion, speaker, gender, text)


@pytest.mark.parametrize("rel", [
    "Actor_01/03-02-05-01-02-01-01.wav",  # song
    "Actor_01/01-01-05-01-02-01-01.mp4",  # audio-video
    "Actor_01/03-01-05-01-02-01.wav",  # a field missing
    "Actor_01/notes.wav",
])
def test_ravdess_not_speech_audio(rel: str) -> None:
    assert ravdess.parse_name(rel) is None


def test_ravdess_bad_code_raises_with_reason() -> None:
    with pytest.raises(ValueError, match="emotion code 09"):
        ravdess.parse_name("Actor_01/03-01-09-01-02-01-01.wav")


@pytest.mark.parametrize(("rel", "emotion", "speaker", "word"), [
    ("OAF_Fear/OAF_back_fear.wav", "fearful", "OAF", "back"),
    ("YAF_pleasant_surprised/YAF_bar_ps.wav", "surprised", "YAF", "bar"),
    ("OAF_Pleasant_surprise/OAF_bath_ps.flac", "surprised", "OAF", "bath"),
    ("OAF_neutral/OA_bite_neutral.wav", "neutral", "OAF", "bite"),  # the distributed typo
    ("YAF_sad/YAF_beg_sad.wav", "sad", "YAF", "beg"),
    ("OAF_angry_copy/oaf_Chain_angry.wav", "angry", "OAF", "chain"),
    ("YAF_dog_disgust.wav", "disgust", "YAF", "dog"),  # flattened
    ("x/YAF_dog_pleasant_surprise.wav", "surprised", "YAF", "dog"),
])
def test_tess_names(rel: str, emotion: str, speaker: str, word: str) -> None:
    p = tess.parse_name(rel)
    assert p is not None and (p.emotion, p.speaker, p.gender, p.text) == (emotion, speaker, "female", word)


@pytest.mark.parametrize("rel", ["OAF_Fear/XYZ_back_fear.wav", "OAF_Fear/back_fear.wav", "README.wav"])
def test_tess_not_tess(rel: str) -> None:
    assert tess.parse_name(rel) is None


def test_tess_unknown_emotion_raises() -> None:
    with pytest.raises(ValueError, match="sleepy"):
        tess.parse_name("OAF_x/OAF_back_sleepy.wav")


@pytest.mark.parametrize(("rel", "emotion", "speaker", "text"), [
    ("DC/a01.wav", "angry", "DC", "a01"),
    ("AudioData/JE/sa15.wav", "sad", "JE", "sa15"),
    ("KL/su03.wav", "surprised", "KL", "su03"),
    ("JK/n30.wav", "neutral", "JK", "n30"),
    ("DC_d01.wav", "disgust", "DC", "d01"),  # flattened copy
    ("flat/jk_F07.WAV", "fearful", "JK", "f07"),
    ("KL/h1.wav", "happy", "KL", "h01"),
])
def test_savee_names(rel: str, emotion: str, speaker: str, text: str) -> None:
    p = savee.parse_name(rel)
    assert p is not None and (p.emotion, p.speaker, p.gender, p.text) == (emotion, speaker, "male", text)


@pytest.mark.parametrize("rel", ["a01.wav", "XX/a01.wav", "XX_a01.wav", "DC/info.txt.wav"])
def test_savee_not_savee(rel: str) -> None:
    assert savee.parse_name(rel) is None


def test_savee_unknown_prefix_raises() -> None:
    with pytest.raises(ValueError, match="prefix"):
        savee.parse_name("DC/x01.wav")


@pytest.mark.parametrize(("rel", "emotion", "speaker", "gender", "sentence", "intensity"), [
    ("1001_DFA_ANG_XX.wav", "angry", "1001", "male", "DFA", "XX"),
    ("AudioWAV/1002_IEO_HAP_HI.wav", "happy", "1002", "female", "IEO", "HI"),
    ("1040_ITH_SAD_X.wav", "sad", "1040", "male", "ITH", "X"),  # a distributed oddity
    ("1091_ieo_neu_xx.wav", "neutral", "1091", "female", "IEO", "XX"),
    ("1100_TSI_FEA_LO.wav", "fearful", "1100", "unknown", "TSI", "LO"),  # not a CREMA-D actor
])
def test_cremad_names(rel: str, emotion: str, speaker: str, gender: str, sentence: str, intensity: str) -> None:
    p = cremad.parse_name(rel)
    assert p is not None
    assert (p.emotion, p.speaker, p.gender) == (emotion, speaker, gender)
    assert (p.extra["sentence"], p.extra["intensity"]) == (sentence, intensity)
    assert p.text == cremad.SENTENCES[sentence]


def test_cremad_gender_table_matches_corpus() -> None:
    genders = Counter(cremad.gender(a) for a in cremad.ACTORS)
    assert genders == {"male": 48, "female": 43}


@pytest.mark.parametrize("rel", ["1001_DFA_ANG.wav", "abcd_DFA_ANG_XX.wav", "1001-DFA-ANG-XX.wav"])
def test_cremad_not_cremad(rel: str) -> None:
    assert cremad.parse_name(rel) is None


def test_cremad_bad_codes_raise() -> None:
    with pytest.raises(ValueError, match="emotion code SUR"):
        cremad.parse_name("1001_DFA_SUR_XX.wav")
    with pytest.raises(ValueError, match="sentence code ABC"):
        cremad.parse_name("1001_ABC_ANG_XX.wav")


@pytest.mark.parametrize(("rel", "emotion", "speaker", "text", "take"), [
    ("anger/a01 (1).wav", "angry", "1", "01", "a"),
    ("Anger/a01(1).wav", "angry", "1", "01", "a"),
    ("disgust/d12 (3)b.wav", "disgust", "3", "12", "b"),
    ("Fear/F05  ( 2 ) .WAV", "fearful", "2", "05", "a"),
    ("happiness/h20 (5).wav", "happy", "5", "20", "a"),
    ("Happy/h3 (4).wav", "happy", "4", "03", "a"),
    ("sadness/s07 (2).wav", "sad", "2", "07", "a"),
    ("s07 (2).wav", "sad", "2", "07", "a"),  # flattened: letter alone decides
    ("Λύπη/s07 (2).wav", "sad", "2", "07", "a"),  # unknown folder spelling: letter decides
])
def test_aesdd_names(rel: str, emotion: str, speaker: str, text: str, take: str) -> None:
    p = aesdd.parse_name(rel)
    assert p is not None
    assert (p.emotion, p.speaker, p.text, p.extra["take"]) == (emotion, speaker, text, take)
    assert p.gender == "unknown"  # see ser.data.corpora.aesdd: the mapping is not published


def test_aesdd_folder_and_letter_disagree() -> None:
    with pytest.raises(ValueError, match="folder"):
        aesdd.parse_name("anger/s01 (1).wav")


@pytest.mark.parametrize("rel", ["anger/a01.wav", "anger/01 (1).wav", "anger/a01 (x).wav"])
def test_aesdd_not_aesdd(rel: str) -> None:
    assert aesdd.parse_name(rel) is None


def test_registry() -> None:
    assert set(CORPORA) == {"ravdess", "tess", "savee", "cremad", "aesdd", "emodb"}
    for name, module in CORPORA.items():
        assert module.NAME == name and module.PATTERN and callable(module.parse_name)


# --- scanning ------------------------------------------------------------------------

def test_scan_reports_every_bad_file(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "savee", ["DC/a01.wav", "DC/n02.wav", "JE/sa03.wav"])
    (root / "README.md").write_text("not audio")  # ignored: not a recording
    (root / "DC" / "notes.txt").write_text("ignored too")
    (root / "DC" / "._a01.wav").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble: ignored
    (root / "DC" / "h04.wav").write_bytes(audio_bytes()[:30])  # truncated header
    (root / "DC" / "f05.wav").write_bytes(b"garbage " * 100)  # not audio at all
    (root / "DC" / "d06.wav").write_bytes(b"")  # empty
    (root / "KL" / "weird name.wav").parent.mkdir()
    (root / "KL" / "weird name.wav").write_bytes(audio_bytes())  # valid audio, unknown name
    (root / "DC" / "x07.wav").write_bytes(audio_bytes())  # scheme fits, prefix unknown

    result = scan("savee", root)

    assert sorted(Path(r.path).name for r in result.rows) == ["a01.wav", "n02.wav", "sa03.wav"]
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert set(reasons) == {"h04.wav", "f05.wav", "d06.wav", "weird name.wav", "x07.wav"}
    for name in ("h04.wav", "f05.wav", "d06.wav"):
        assert reasons[name].startswith("cannot decode")
    assert "does not follow the savee scheme" in reasons["weird name.wav"]
    assert "prefix" in reasons["x07.wav"]
    row = next(r for r in result.rows if r.path.endswith("a01.wav"))
    assert (row.corpus, row.speaker, row.gender, row.emotion, row.container) == ("savee", "savee-DC", "male", "angry", "WAV")
    assert row.sample_rate == 8000 and row.duration == pytest.approx(0.05)
    assert len(row.sha256) == 64 and Path(row.path).is_absolute()


def test_scan_reads_container_from_header(tmp_path: Path) -> None:
    root = build_tree(tmp_path, ["YAF_angry/YAF_germ_angry.wav", "YAF_angry/YAF_back_angry.wav"],
                      aiff=frozenset({"YAF_angry/YAF_germ_angry.wav"}))
    rows = {Path(r.path).name: r for r in scan("tess", root).rows}
    assert rows["YAF_germ_angry.wav"].container == "AIFF"
    assert rows["YAF_back_angry.wav"].container == "WAV"
    assert len(select_study({"tess": list(rows.values())}, seed=0)) == 1


def test_scan_rejects_unknown_corpus_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus"):
        scan("iemocap", tmp_path)
    with pytest.raises(FileNotFoundError):
        scan("tess", tmp_path / "nope")


def test_scan_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = build_tree(tmp_path, ["DC/a01.wav"])
    assert len(scan("savee", root, progress=True).rows) == 1
    assert "scan savee" in capsys.readouterr().err


def test_table_round_trip(tmp_path: Path) -> None:
    rows = [
        Utterance("/a/b, c.wav", "cremad", "cremad-1001", "male", "angry", "It's eleven o'clock",
                  "ab" * 32, 2.5025, 16000, "WAV"),
        Utterance("/a/\"q\".wav", "tess", "tess-OAF", "female", "surprised", "bar", "cd" * 32, 1.0, 24414, "AIFF"),
    ]
    assert read_table(write_table(rows, tmp_path / "t" / "table.csv")) == rows
    problems = [Problem("/x.wav", "cannot decode: not a readable audio file (Format not recognised)")]
    assert read_problems(write_problems(problems, tmp_path / "problems.csv")) == problems
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_table(tmp_path / "other.csv")


# --- the study's Table 1 from trees with the real file names ---------------------------

@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Utterance]]:
    """Scan trees of tiny files named as the four English corpora are distributed."""
    if not MANIFESTS.is_dir():
        pytest.skip(f"corpus manifests not found at {MANIFESTS} (set SER_SHARED_DIR)")
    base = tmp_path_factory.mktemp("english")
    out: dict[str, list[Utterance]] = {}
    for corpus in ("ravdess", "tess", "savee", "cremad"):
        rel = manifest(corpus)
        root = build_tree(base / corpus, rel, aiff=TESS_AIFF if corpus == "tess" else frozenset())
        result = scan(corpus, root)
        assert result.problems == [], result.problems[:5]
        assert len(result.rows) == len(rel)
        out[corpus] = result.rows
    return out


@needs_manifests
@pytest.mark.shared
def test_select_study_reproduces_table1(english: dict[str, list[Utterance]]) -> None:
    selected = select_study(english, seed=0)
    by = Counter((r.corpus, r.emotion) for r in selected)
    for corpus, expected in TABLE1.items():
        got = {e: n for (c, e), n in by.items() if c == corpus}
        assert got == expected, corpus
    assert Counter(r.corpus for r in selected) == {"ravdess": 1248, "tess": 2798, "savee": 480, "cremad": 1874}
    assert len(selected) == 6400
    totals = Counter(r.emotion for r in selected)
    assert totals == {"happy": 925, "angry": 924, "disgust": 925, "fearful": 924, "sad": 925,
                      "neutral": 1125, "surprised": 652}
    def rel(r: Utterance) -> str:
        return f"{Path(r.path).parent.name}/{Path(r.path).name}"

    dropped = {rel(r) for r in english["tess"]} - {rel(r) for r in selected if r.corpus == "tess"}
    assert dropped == TESS_AIFF
    # gender tables are consistent with the study's "about 67.2% female"
    female = sum(r.gender == "female" for r in selected) / len(selected)
    assert 0.665 < female < 0.68
    assert not any(r.gender == "unknown" for r in selected)


@needs_manifests
@pytest.mark.shared
def test_select_study_cremad_subset(english: dict[str, list[Utterance]]) -> None:
    a = select_study({"cremad": english["cremad"]}, seed=0)
    b = select_study({"cremad": english["cremad"]}, seed=0)
    c = select_study({"cremad": english["cremad"]}, seed=1)
    assert a == b and a != c  # the neutral draw follows the seed, and only it
    emotional = [Path(r.path).name for r in a if r.emotion != "neutral"]
    assert all("_IEO_" in n and n.split("_")[3][:2] in {"LO", "MD", "HI"} for n in emotional)
    assert len({r.speaker for r in a if r.emotion == "angry"}) == 91
    neutral_a = {r.path for r in a if r.emotion == "neutral"}
    neutral_c = {r.path for r in c if r.emotion == "neutral"}
    assert len(neutral_a) == len(neutral_c) == 509 and neutral_a != neutral_c
    # the draw does not depend on the order rows come in
    assert select_study({"cremad": english["cremad"][::-1]}, seed=0)[::-1] == a


@needs_manifests
@pytest.mark.shared
def test_savee_flattened_copy_gives_same_rows(tmp_path: Path) -> None:
    flat = [p.replace("/", "_") for p in manifest("savee")]
    rows = scan("savee", build_tree(tmp_path, flat)).rows
    assert len(rows) == 480
    assert Counter((r.speaker, r.emotion) for r in rows)[("savee-KL", "neutral")] == 30


@needs_manifests
@pytest.mark.shared
def test_every_manifest_name_parses() -> None:
    for corpus in ("ravdess", "tess", "savee", "cremad"):
        for rel in manifest(corpus):
            assert CORPORA[corpus].parse_name(rel) is not None, rel


# --- the real TESS copy --------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.shared
@pytest.mark.skipif(not TESS_DIR.is_dir(), reason=f"TESS not found at {TESS_DIR} (set SER_SHARED_DIR)")
def test_scan_real_tess() -> None:
    audio_files = [p for p in TESS_DIR.rglob("*") if p.suffix.lower() in {".wav", ".flac"}]
    result = scan("tess", TESS_DIR)
    accounted = {r.path for r in result.rows} | {p.path for p in result.problems}
    assert accounted == {str(p.resolve()) for p in audio_files}
    assert all(p.reason for p in result.problems)
    rows = {Path(r.path).relative_to(TESS_DIR.resolve()).as_posix(): r for r in result.rows}
    assert len(rows) == 2800 and result.problems == []
    for rel in TESS_AIFF:
        assert rows[rel].container == "AIFF"
    for rel in ("OAF_angry/OAF_back_angry.wav", "YAF_sad/YAF_beg_sad.wav"):  # 32-bit float, 44.1 kHz
        assert (rows[rel].container, rows[rel].sample_rate) == ("WAV", 44100)
    assert rows["OAF_fear/OAF_food_fear.flac"].sample_rate == 96000
    assert rows["OAF_neutral/OA_bite_neutral.flac"].speaker == "tess-OAF"
    assert Counter(r.speaker for r in result.rows) == {"tess-OAF": 1400, "tess-YAF": 1400}
    selected = select_study({"tess": result.rows}, seed=0)
    assert Counter(r.emotion for r in selected) == TABLE1["tess"]
