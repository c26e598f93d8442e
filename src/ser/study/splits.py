"""Train/test splits and k folds, random (stratified) or speaker-independent.

Only ORIGINAL rows (``fs.augment == ""``) are ever split. Augmented copies
(``fs.group`` = the ``source_id`` of their original) follow their source: they go
to the training side when the source does, and never to a test or validation side.
A copy made with mode ``"replace"`` replaces its source on the training side (the
study modified the TESS waveforms in place); a copy made with ``"add"`` trains
beside its source. A copy whose source is not in the feature set at all can never
leak, so it trains whenever its group is in the pool.

Protocols:
- ``random``: stratified on the labels (scikit-learn), as the study did; the same
  speaker may appear on both sides.
- ``speaker``: no speaker on both sides (speakers are keyed by corpus and speaker
  id). For the 80/20 split, speakers are grouped into folds by
  StratifiedGroupKFold and the fold closest to the wanted test size is the test
  side; with fewer speakers than folds (TESS alone: 2 speakers) the subset of
  speakers closest to the wanted size is chosen (one speaker each side for TESS).

Speaker-independent evaluation (:func:`speaker_folds`): every speaker is tested once,
by a model that never heard them (leave-one-speaker-out, or grouped k-fold), and the
model's checkpoint and early stop are chosen on a validation side carved from the
*training speakers* of that fold (:func:`validation_split`), never from test rows.

All indices are sorted int64 arrays of rows of ``fs``.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Iterable, Literal, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from ser.data.dataset import FeatureSet

Protocol = Literal["random", "speaker"]
PROTOCOLS: tuple[str, ...] = ("random", "speaker")


class SplitError(ValueError):
    """A split that cannot be made (too few speakers or rows), with the reason."""


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise SplitError(f"split protocol must be one of {PROTOCOLS}, got {protocol!r}")


def speaker_keys(fs: FeatureSet) -> np.ndarray:
    """Speaker identity per row, qualified by corpus (two corpora may reuse an id)."""
    return np.char.add(np.char.add(fs.corpus.astype(str), "/"), fs.speaker.astype(str))


def _originals_of(fs: FeatureSet, groups: np.ndarray) -> np.ndarray:
    """Original rows whose group is in ``groups``."""
    return np.flatnonzero(fs.is_original & np.isin(fs.group, groups))


def training_rows(fs: FeatureSet, train_groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """All rows that train when the sources ``train_groups`` are on the training side:
    their originals, their "add" copies, and their "replace" copies instead of the
    originals they replace."""
    groups = np.unique(np.asarray(train_groups, dtype=str))
    in_pool = np.isin(fs.group, groups)
    copies = in_pool & ~fs.is_original
    replaced = np.unique(fs.group[copies & (fs.augment == "replace")])
    originals = in_pool & fs.is_original & ~np.isin(fs.source_id, replaced)
    return np.flatnonzero(originals | copies).astype(np.int64)


def _sizes_ok(n: int, test_size: float) -> None:
    if not 0.0 < test_size < 1.0:
        raise SplitError(f"test_size must be a fraction in (0, 1), got {test_size}")
    if n < 2:
        raise SplitError(f"need at least 2 original rows to split, got {n}")


def _speaker_test_rows(fs: FeatureSet, orig: np.ndarray, test_size: float, seed: int) -> np.ndarray:
    speakers = speaker_keys(fs)[orig]
    unique = np.unique(speakers)
    if unique.size < 2:
        raise SplitError(f"a speaker-independent split needs at least 2 speakers, the data has {unique.size}")
    n_splits = max(2, int(round(1.0 / test_size)))
    target = test_size * orig.size
    if unique.size >= n_splits:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class" warnings
            folds = [test for _, test in cv.split(np.zeros(orig.size), fs.labels[orig], speakers)]
        best = min(folds, key=lambda t: abs(t.size - target))
        return orig[best]
    # Few speakers (TESS alone): choose the subset of speakers closest to the target,
    # keeping at least one speaker on each side; ties broken by a seeded order.
    rng = np.random.default_rng(seed)
    order = rng.permutation(unique)
    counts = {s: int(np.sum(speakers == s)) for s in order}
    best_subset, best_gap = None, None
    for r in range(1, order.size):
        for subset in itertools.combinations(order, r):
            gap = abs(sum(counts[s] for s in subset) - target)
            if best_gap is None or gap < best_gap - 1e-9:
                best_subset, best_gap = subset, gap
    return orig[np.isin(speakers, best_subset)]


def train_test(fs: FeatureSet, test_size: float = 0.2, seed: int = 0, protocol: Protocol = "random") -> tuple[np.ndarray, np.ndarray]:
    """Split into (train rows, test rows). The test side holds originals only; the
    training side holds the other originals and every copy of them (see module doc)."""
    _check_protocol(protocol)
    orig = np.flatnonzero(fs.is_original)
    _sizes_ok(orig.size, test_size)
    if protocol == "random":
        labels = fs.labels[orig]
        counts = np.bincount(labels)
        try:
            stratify = labels if counts[counts > 0].min() >= 2 else None
            _, test = train_test_split(orig, test_size=test_size, random_state=seed, stratify=stratify)
        except ValueError:  # too few rows per class for the test size: stratification is a nicety
            _, test = train_test_split(orig, test_size=test_size, random_state=seed)
    else:
        test = _speaker_test_rows(fs, orig, test_size, seed)
    test = np.sort(np.asarray(test, dtype=np.int64))
    test_groups = fs.source_id[test]
    all_groups = np.unique(fs.group)
    train = training_rows(fs, all_groups[~np.isin(all_groups, test_groups)])
    return train, test


def kfold(fs: FeatureSet, idx: Sequence[int] | np.ndarray, k: int = 5, seed: int = 0, protocol: Protocol = "random") -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds over the sources of the rows ``idx`` (e.g. the training side of
    :func:`train_test`): a list of (train rows, validation rows).

    The pool is every source whose group appears in ``idx``; validation sides hold
    originals only, training sides the other sources with their copies."""
    _check_protocol(protocol)
    k = int(k)
    if k < 2:
        raise SplitError(f"k must be at least 2, got {k}")
    idx = np.asarray(idx, dtype=np.int64)
    pool = np.unique(fs.group[idx])
    orig = _originals_of(fs, pool)
    if orig.size < k:
        raise SplitError(f"{k} folds need at least {k} original rows, the pool has {orig.size}")
    labels = fs.labels[orig]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" warnings
        if protocol == "random":
            counts = np.bincount(labels)
            if counts[counts > 0].min() >= k:
                splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(orig, labels)
            else:  # a class too small to stratify; stratification is a nicety, not a must
                from sklearn.model_selection import KFold

                splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(orig)
        else:
            speakers = speaker_keys(fs)[orig]
            n_speakers = np.unique(speakers).size
            if n_speakers < k:
                raise SplitError(
                    f"{k} speaker-independent folds need at least {k} speakers; this pool has {n_speakers}"
                    " (use --split random, or fewer folds)"
                )
            splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(orig, labels, speakers)
        folds = []
        for _, val_pos in splits:
            val = np.sort(orig[val_pos])
            val_groups = fs.source_id[val]
            train = training_rows(fs, pool[~np.isin(pool, val_groups)])
            folds.append((train, val))
    return folds


def speaker_folds(fs: FeatureSet, k: int | None = None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer folds for speaker-independent evaluation: a list of (training rows, test
    rows) over all original rows, no speaker on both sides of any fold.

    ``k=None``: leave-one-speaker-out (one fold per speaker, in speaker order);
    otherwise ``k`` speaker groups balanced by class (StratifiedGroupKFold)."""
    orig = np.flatnonzero(fs.is_original)
    speakers = speaker_keys(fs)[orig]
    unique = np.unique(speakers)
    if unique.size < 2:
        raise SplitError(f"speaker-independent folds need at least 2 speakers, the data has {unique.size}")
    if k is not None:
        return kfold(fs, orig, k=k, seed=seed, protocol="speaker")
    all_groups = np.unique(fs.group)
    folds = []
    for speaker in unique:
        test = np.sort(orig[speakers == speaker]).astype(np.int64)
        train = training_rows(fs, all_groups[~np.isin(all_groups, fs.source_id[test])])
        folds.append((train, test))
    return folds


def validation_split(fs: FeatureSet, idx: Sequence[int] | np.ndarray, size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Carve a validation side out of training rows ``idx``: (fit rows, validation rows).

    Speakers are held out whole when the training side has two or more (so early
    stopping and checkpoint choice see voices the fit did not hear, like the test);
    with a single training speaker (TESS one speaker to the other) validation rows
    are drawn from that speaker, stratified by class. Copies follow their source."""
    idx = np.asarray(idx, dtype=np.int64)
    pool = np.unique(fs.group[idx])
    rows = np.flatnonzero(np.isin(fs.group, pool))
    sub = fs.subset(rows)
    n_speakers = np.unique(speaker_keys(sub)[sub.is_original]).size
    fit, val = train_test(sub, size, seed=seed, protocol="speaker" if n_speakers >= 2 else "random")
    return rows[fit], rows[val]


def describe(fs: FeatureSet, train: np.ndarray, test: np.ndarray) -> dict:
    """Sizes and speaker counts of a split, for logs and metrics.json."""
    keys = speaker_keys(fs)
    return {
        "train_rows": int(train.size),
        "test_rows": int(test.size),
        "train_augmented": int(np.sum(~fs.is_original[train])),
        "train_speakers": int(np.unique(keys[train]).size),
        "test_speakers": int(np.unique(keys[test]).size),
        "shared_speakers": int(np.intersect1d(keys[train], keys[test]).size),
    }


def held_out_rows(fs: FeatureSet, test_sources: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, test rows) of ``fs`` with the sources ``test_sources`` held out.

    The search holds the same sources out of every feature set (:func:`search_split`);
    the final model must be tested on exactly those, whatever feature set won: a
    fresh split of the winner's feature set can put utterances the search trained
    on into the test side. Test rows are originals only; copies of a held-out
    source never train."""
    sources = np.asarray(sorted(set(test_sources)), dtype=str)
    test = np.flatnonzero(fs.is_original & np.isin(fs.source_id, sources)).astype(np.int64)
    groups = np.unique(fs.group)
    train = training_rows(fs, groups[~np.isin(groups, sources)])
    return train, test


def recorded_split(fs: FeatureSet, meta: dict, *, split: Protocol | None = None, seed: int | None = None,
                   test_size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of ``fs`` as a model's metadata records them: the sources
    a search held out (``held_out_sources``: the study's final model is tested on exactly
    those), else its split protocol, seed and test size; arguments given override the
    metadata's split. Evaluation and the champion gate score the same rows this way."""
    held = meta.get("held_out_sources")
    if held and split is None and seed is None and test_size is None:
        return held_out_rows(fs, held)
    return train_test(fs, test_size or float(meta.get("test_size", 0.2)),
                      seed=int(meta.get("seed", 0)) if seed is None else int(seed),
                      protocol=split or meta.get("split") or "random")
