"""Splits: stratified and speaker-independent, augmented copies on training sides only."""

from __future__ import annotations

import numpy as np
import pytest

from ser.study import splits
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec

CLASSES = ("happy", "angry", "disgust", "fearful", "sad", "neutral", "surprised")


def make_fs(speakers: dict[tuple[str, str], int], augment_corpus: str | None = None, mode: str = "replace", copies: int = 1, seed: int = 0) -> FeatureSet:
    """Rows per (corpus, speaker), labels cycling over 7 classes; copies of every
    original of ``augment_corpus`` appended (group = source id)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (corpus, speaker), n in speakers.items():
        for j in range(n):
            rows.append((corpus, speaker, j % len(CLASSES), f"{corpus}-{speaker}-{j}", f"{corpus}-{speaker}-{j}", ""))
    if augment_corpus:
        originals = [r for r in rows if r[0] == augment_corpus]
        for corpus, speaker, label, sid, _, _ in originals:
            for c in range(copies):
                rows.append((corpus, speaker, label, f"{sid}~aug{c}", sid, mode))
    order = rng.permutation(len(rows))  # copies interleaved with originals
    rows = [rows[i] for i in order]
    n = len(rows)
    col = lambda k: np.array([r[k] for r in rows], dtype=str)  # noqa: E731
    return FeatureSet(
        images=np.zeros((n, 8, 8), np.float32),
        labels=np.array([r[2] for r in rows], dtype=np.int64),
        label_names=CLASSES,
        spec=FeatureSpec(size=8),
        speaker=col(1), corpus=col(0), source_id=col(3), group=col(4), augment=col(5),
    )


STUDY_LIKE = {("ravdess", f"{a:02d}"): 21 for a in range(1, 13)} | {("tess", "OAF"): 70, ("tess", "YAF"): 70} | {("savee", s): 28 for s in ("DC", "JE", "JK", "KL")}


def assert_clean(fs: FeatureSet, train: np.ndarray, evaluation: np.ndarray, speaker_protocol: bool = False) -> None:
    """The invariants every split must keep."""
    assert np.all(np.diff(train) > 0) and np.all(np.diff(evaluation) > 0)  # sorted, no duplicates
    assert np.intersect1d(train, evaluation).size == 0
    # Evaluation sides hold originals only ...
    assert fs.is_original[evaluation].all()
    # ... and no group on the evaluation side has an augmented row anywhere in it, nor any row in training.
    eval_groups = set(fs.group[evaluation])
    assert not any(fs.group[i] in eval_groups and not fs.is_original[i] for i in evaluation)
    assert eval_groups.isdisjoint(set(fs.group[train]))
    if speaker_protocol:
        keys = splits.speaker_keys(fs)
        assert set(keys[train]).isdisjoint(set(keys[evaluation]))


@pytest.mark.parametrize("protocol", ["random", "speaker"])
def test_train_test_invariants_and_size(protocol):
    fs = make_fs(STUDY_LIKE, augment_corpus="tess", mode="replace")
    train, test = splits.train_test(fs, 0.2, seed=3, protocol=protocol)
    assert_clean(fs, train, test, speaker_protocol=protocol == "speaker")
    n_orig = int(fs.is_original.sum())
    assert abs(test.size - 0.2 * n_orig) <= (2 if protocol == "random" else 0.1 * n_orig)
    # Every source is on exactly one side: in test as an original, or in training (as itself or its copy).
    covered = set(fs.group[train]) | set(fs.group[test])
    assert covered == set(fs.group)


def test_random_split_is_stratified_and_seeded():
    fs = make_fs(STUDY_LIKE)
    train, test = splits.train_test(fs, 0.2, seed=0)
    counts = np.bincount(fs.labels[test], minlength=7)
    assert counts.max() - counts.min() <= 1
    again, _ = splits.train_test(fs, 0.2, seed=0)
    other, _ = splits.train_test(fs, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_replace_copies_replace_their_source_on_the_training_side():
    fs = make_fs(STUDY_LIKE, augment_corpus="tess", mode="replace")
    train, test = splits.train_test(fs, 0.2, seed=0)
    tess_train = train[fs.corpus[train] == "tess"]
    assert tess_train.size > 0
    assert not fs.is_original[tess_train].any()  # only copies of TESS train
    test_groups = set(fs.group[test])
    expected = {g for g in fs.group[fs.corpus == "tess"] if g not in test_groups}
    assert set(fs.group[tess_train]) == expected
    # Non-augmented corpora train with their originals.
    assert fs.is_original[train[fs.corpus[train] != "tess"]].all()


def test_add_copies_train_beside_their_source():
    fs = make_fs(STUDY_LIKE, augment_corpus="tess", mode="add", copies=2)
    train, test = splits.train_test(fs, 0.2, seed=0)
    assert_clean(fs, train, test)
    tess_train = train[fs.corpus[train] == "tess"]
    originals = tess_train[fs.is_original[tess_train]]
    copies = tess_train[~fs.is_original[tess_train]]
    assert copies.size == 2 * originals.size
    assert set(fs.group[copies]) == set(fs.source_id[originals])


@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("protocol", ["random", "speaker"])
def test_kfold_keeps_copies_out_of_validation(mode, protocol):
    fs = make_fs(STUDY_LIKE, augment_corpus="tess", mode=mode)
    train, test = splits.train_test(fs, 0.2, seed=1, protocol=protocol)
    folds = splits.kfold(fs, train, k=5, seed=1, protocol=protocol)
    assert len(folds) == 5
    pool = set(fs.group[train])
    val_all = np.concatenate([v for _, v in folds])
    # Each pool source is validated exactly once, as an original; never a test row.
    assert sorted(fs.group[val_all]) == sorted(pool)
    assert np.intersect1d(val_all, test).size == 0
    for tr, val in folds:
        assert_clean(fs, tr, val, speaker_protocol=protocol == "speaker")
        assert set(fs.group[tr]) | set(fs.group[val]) == pool
        assert set(fs.group[tr]).isdisjoint(set(fs.group[test]))
        if mode == "replace":
            tess = tr[fs.corpus[tr] == "tess"]
            assert not fs.is_original[tess].any()


def test_speaker_split_of_tess_alone_puts_one_speaker_each_side():
    fs = make_fs({("tess", "OAF"): 60, ("tess", "YAF"): 60}, augment_corpus="tess", mode="add")
    for seed in range(3):
        train, test = splits.train_test(fs, 0.2, seed=seed, protocol="speaker")
        assert_clean(fs, train, test, speaker_protocol=True)
        assert len(set(fs.speaker[test])) == 1 and len(set(fs.speaker[train])) == 1
        assert test.size == 60
    # Speaker-independent folds need more speakers than one training side has.
    with pytest.raises(splits.SplitError, match="speakers"):
        splits.kfold(fs, train, k=5, protocol="speaker")


def test_speaker_split_uses_corpus_qualified_speakers():
    # The same speaker id in two corpora is two speakers.
    fs = make_fs({("a", "01"): 40, ("b", "01"): 40, ("a", "02"): 40})
    train, test = splits.train_test(fs, 0.3, seed=0, protocol="speaker")
    assert_clean(fs, train, test, speaker_protocol=True)
    assert len(set(splits.speaker_keys(fs)[test])) == 1


def test_kfold_over_original_indices_attaches_copies():
    # Passing only original rows as the pool still trains their copies.
    fs = make_fs(STUDY_LIKE, augment_corpus="tess", mode="add")
    orig = np.flatnonzero(fs.is_original)
    for tr, val in splits.kfold(fs, orig, k=3, seed=0):
        assert (~fs.is_original[tr]).sum() > 0
        assert_clean(fs, tr, val)


def test_orphan_copies_train_and_errors_are_clear():
    fs = make_fs({("x", "s1"): 30, ("x", "s2"): 30})
    orphan = make_fs({("y", "s9"): 5}, augment_corpus="y", mode="add")
    orphan = orphan.subset(np.flatnonzero(~orphan.is_original))  # copies whose source is absent
    both = FeatureSet.concat([fs, orphan])
    train, test = splits.train_test(both, 0.2, seed=0)
    assert_clean(both, train, test)
    assert (~both.is_original[train]).sum() == 5
    with pytest.raises(splits.SplitError, match="protocol"):
        splits.train_test(fs, protocol="bogus")
    with pytest.raises(splits.SplitError, match="test_size"):
        splits.train_test(fs, test_size=1.5)
    with pytest.raises(splits.SplitError, match="2 speakers"):
        splits.train_test(make_fs({("x", "s1"): 20}), protocol="speaker")
    with pytest.raises(splits.SplitError, match="at least 2"):
        splits.kfold(fs, np.arange(len(fs)), k=1)


def test_describe_reports_shared_speakers():
    fs = make_fs(STUDY_LIKE)
    train, test = splits.train_test(fs, 0.2, seed=0, protocol="random")
    assert splits.describe(fs, train, test)["shared_speakers"] > 0
    train, test = splits.train_test(fs, 0.2, seed=0, protocol="speaker")
    info = splits.describe(fs, train, test)
    assert info["shared_speakers"] == 0 and info["test_rows"] == test.size


# --------------------------------------------------------------------------- speaker-independent protocol


def _random_corpus(rng: np.random.Generator):
    """A feature set of random size with 2..9 speakers, unbalanced classes and some
    augmented copies (add and replace) of random sources."""
    from ser.data.dataset import FeatureSet
    from ser.data.features import FeatureSpec

    n_orig = int(rng.integers(30, 120))
    n_spk = int(rng.integers(2, 10))
    spk = rng.integers(0, n_spk, n_orig)
    spk[:n_spk] = np.arange(n_spk)  # every speaker has a row
    labels = rng.integers(0, 4, n_orig)
    ids = np.array([f"src{i}" for i in range(n_orig)])
    copies = rng.choice(n_orig, size=int(rng.integers(0, n_orig // 2)), replace=False)
    modes = rng.choice(["add", "replace"], size=copies.size)
    speaker = np.concatenate([np.array([f"s{s}" for s in spk]), np.array([f"s{spk[c]}" for c in copies])])
    n = n_orig + copies.size
    return FeatureSet(
        images=np.zeros((n, 8, 8), np.float32), labels=np.concatenate([labels, labels[copies]]).astype(np.int64),
        label_names=("a", "b", "c", "d"), spec=FeatureSpec(size=8), speaker=speaker, corpus=np.array(["x"] * n),
        source_id=np.concatenate([ids, np.array([f"copy{i}" for i in range(copies.size)])]),
        group=np.concatenate([ids, ids[copies]]), augment=np.concatenate([np.array([""] * n_orig), modes]),
    )


def test_no_speaker_ever_crosses_train_validation_and_test():
    """Property over 40 random corpora: in every speaker fold, the test, validation and
    fit sides share no speaker (when the fold's training side has two or more), no
    source crosses sides, copies stay on the fit side, and every speaker is tested once."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        fs = _random_corpus(rng)
        keys = splits.speaker_keys(fs)
        n_spk = np.unique(keys).size
        k = None if trial % 2 == 0 else int(rng.integers(2, n_spk + 1))
        folds = splits.speaker_folds(fs, k, seed=trial)
        tested = np.concatenate([test for _, test in folds])
        assert np.unique(keys[tested]).size == n_spk and tested.size == np.unique(tested).size
        for train, test in folds:
            fit, val = splits.validation_split(fs, train, 0.25, seed=trial)
            assert not set(keys[test]) & set(keys[train])
            assert not set(fs.group[test]) & set(fs.group[fit]) and not set(fs.group[val]) & set(fs.group[fit])
            assert fs.is_original[test].all() and fs.is_original[val].all()
            assert set(fit) | set(val) <= set(np.flatnonzero(np.isin(fs.group, fs.group[train])))
            if np.unique(keys[train]).size >= 2:
                assert not set(keys[val]) & set(keys[fit]), f"trial {trial}: a validation speaker also trains"


def test_leave_one_speaker_out_tests_each_speaker_alone():
    fs = _random_corpus(np.random.default_rng(3))
    keys = splits.speaker_keys(fs)
    folds = splits.speaker_folds(fs)
    assert len(folds) == np.unique(keys).size
    for train, test in folds:
        assert np.unique(keys[test]).size == 1 and keys[test][0] not in set(keys[train])


def test_one_training_speaker_validates_on_its_own_rows():
    """TESS one speaker to the other: the fold trains on one voice, so validation rows
    come from that voice (stratified), never from the test speaker."""
    fs = _random_corpus(np.random.default_rng(5))
    keep = np.isin(splits.speaker_keys(fs), ["x/s0", "x/s1"])
    fs = fs.subset(np.flatnonzero(keep))
    for train, test in splits.speaker_folds(fs):
        fit, val = splits.validation_split(fs, train, 0.2)
        assert set(splits.speaker_keys(fs)[val]) == set(splits.speaker_keys(fs)[train])
        assert not set(fs.group[val]) & set(fs.group[fit]) and not set(fs.group[val]) & set(fs.group[test])
    with pytest.raises(splits.SplitError, match="at least 2 speakers"):
        splits.speaker_folds(fs.subset(np.flatnonzero(splits.speaker_keys(fs) == "x/s0")))
