"""The search (METHOD.md sections 4-6): grids, shared first ten vectors, redraws,
perturbation tables, k-fold scoring with resume and early stopping, ranking
table, and the four stages end to end on a tiny synthetic feature set."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from ser import search, stopping, training
from ser.dataset import FeatureSet
from ser.features import KINDS, SIZES, FeatureSpec
from ser.labels import label_set
from ser.models import ArchSpec, SpecError

def make_features(per_class: int = 10, size: int = 30, kind: str = "mel", seed: int = 0) -> FeatureSet:
    """Images whose class is a bright horizontal band at a class-dependent height."""
    rng = np.random.default_rng(seed)
    names = label_set("english")
    images, labels = [], []
    for c in range(len(names)):
        for _ in range(per_class):
            image = rng.random((size, size), dtype=np.float32) * 0.5
            row = 1 + c * (size - 4) // len(names)
            image[row : row + 3, :] += 0.5
            images.append(np.clip(image, 0, 1))
            labels.append(c)
    n = len(labels)
    ids = np.array([f"src{i:04d}" for i in range(n)])
    return FeatureSet(
        np.stack(images), np.array(labels, dtype=np.int64), names, FeatureSpec(kind=kind, size=size),
        speaker=np.array([f"s{i % 4}" for i in range(n)]), corpus=np.array(["synthetic"] * n),
        source_id=ids, group=ids.copy(), augment=np.array([""] * n),
    )


def tiny_vector(size: int = 30, **arch) -> search.Vector:
    spec = dict(cnn="squirtle", in_size=size, conv_channels=(4, 4, 4), conv_kernels=(3, 3, 3), pool_kernels=(2, 2, 2),
                pool_strides=(2, 2, 2), fc_features=(16, 16), bn_momentum=0.1, dropout=0.25)
    spec.update(arch)
    return search.Vector(ArchSpec(**spec), 16, 3e-3, "mel", size)


def tiny_recipe() -> search.Recipe:
    """The demo recipe, smaller still: 1 vector per combination/parent, 2 epochs, 2% width."""
    recipe = search.load_recipe("demo").with_overrides(trials=1, epochs=2)
    return replace(recipe, scale=0.02)


class CountingFit:
    """Wraps ser.training.fit and counts its calls."""

    def __init__(self, monkeypatch, hook=None):
        self.calls: list[training.TrainConfig] = []
        self.real = training.fit
        self.hook = hook
        monkeypatch.setattr(training, "fit", self)

    def __call__(self, model, train, val, cfg, **kw):
        self.calls.append(cfg)
        if self.hook is not None:
            kw = self.hook(len(self.calls), cfg, kw)
        return self.real(model, train, val, cfg, **kw)


# --------------------------------------------------------------------------- grids


def test_grids_are_methods_and_the_study_recipe_keeps_them():
    space = search.SearchSpace()
    assert space.conv_channels == tuple(range(100, 421, 16)) and space.conv_channels[-1] == 420
    assert space.conv_kernels == space.pool_kernels == space.pool_strides == (2, 3)
    assert space.bn_momentum == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert space.dropout == (0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    assert space.fc_features == tuple(range(1024, 4225, 128)) and space.fc_features[-1] == 4224
    assert space.batch_size == (16, 32, 48, 64)
    assert space.lr == (2e-8, 6e-8, 1e-7, 5e-7, 1e-6, 3e-6, 6e-6, 9e-6, 2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 3e-4, 7e-4)
    study = search.load_recipe("study")
    assert study.grid == space and study.scale == 1.0 and study.perturbation == search.PERTURB
    assert (study.folds, study.split, study.test_size) == (5, "random", 0.2)
    s1, s2, s3, s4 = (study.stage(i) for i in (1, 2, 3, 4))
    assert s1.rules == stopping.STAGE1 and s2.rules == stopping.STAGE2 and s4.rules == stopping.NONE
    assert s4.max_epochs == 150 and s4.take == 4 and s3.take == 3 and s3.vectors == 10 and s1.thresholds == (0.6, 0.6)
    combos, missing = s1.combinations([(k, s) for k in KINDS for s in SIZES])
    assert not missing and len(combos) == 36 + 4
    counts = {(c.cnn, c.feature, c.size, c.leaky_slope): c.vectors for c in combos}
    assert counts[("bulba", "chroma", 30, None)] == counts[("bulba", "chroma", 50, None)] == 25
    assert counts[("bulba", "chroma", 60, None)] == counts[("squirtle", "mel", 30, None)] == 10
    assert {k for k in counts if k[3] is not None} == {("charma", f, 50, s) for f in ("chroma", "mel") for s in (0.005, 0.05)}
    assert sum(counts.values()) == 36 * 10 + 2 * 15 + 4 * 10
    combos2, _ = s2.combinations([(k, s) for k in KINDS for s in SIZES])
    assert {(c.cnn, c.feature, c.size) for c in combos2} == {(n, f, 60) for n in ("bulba", "charma", "squirtle") for f in ("mel", "chroma")}
    assert s2.merge and s2.stream != s1.stream


def test_sampled_vectors_stay_on_the_grids():
    space = search.SearchSpace()
    for cnn in ("bulba", "charma", "squirtle"):
        for v in search.sample_vectors(space, 60, seed=3, cnn=cnn, in_size=60):
            a = v.arch
            assert set(a.conv_channels) <= set(space.conv_channels) and set(a.fc_features) <= set(space.fc_features)
            assert set(a.conv_kernels) | set(a.pool_kernels) | set(a.pool_strides) <= {2, 3}
            assert a.bn_momentum in space.bn_momentum and a.dropout in space.dropout
            assert v.batch_size in space.batch_size and v.lr in space.lr and a.leaky_slope == 0.01
            assert a.cnn == cnn and a.in_size == v.size == 60
    # every grid value is reachable
    draws = search.sample_vectors(space, 400, seed=0, cnn="squirtle", in_size=60)
    assert {c for v in draws for c in v.arch.conv_channels} == set(space.conv_channels)
    assert {v.lr for v in draws} == set(space.lr)


def test_first_ten_vectors_are_shared_by_every_combination():
    space = search.SearchSpace()
    reference = None
    for cnn in ("bulba", "charma", "squirtle"):
        for kind in KINDS:
            for size in SIZES:
                n = 25 if (cnn, kind) == ("bulba", "chroma") and size in (30, 50) else 10
                vectors = search.sample_vectors(space, n, seed=0, cnn=cnn, in_size=size, feature=kind)
                assert len(vectors) == n and all(v.redraws == 0 for v in vectors)  # every study size fits every draw
                secondary = [v.secondary() for v in vectors[:10]]
                reference = reference or secondary
                assert secondary == reference
                assert len({v.id for v in vectors}) == n
    slope = search.sample_vectors(space, 10, seed=0, cnn="charma", in_size=50, leaky_slope=0.005)
    assert [{**v.secondary(), "leaky_slope": 0.01} for v in slope] == reference
    assert all(v.arch.leaky_slope == 0.005 for v in slope)
    # stage 2 draws new vectors; another seed other vectors
    assert [v.secondary() for v in search.sample_vectors(space, 10, seed=0, cnn="bulba", in_size=60, stream=2)] != reference
    assert [v.secondary() for v in search.sample_vectors(space, 10, seed=1, cnn="bulba", in_size=60)] != reference
    # ids are stable content hashes
    again = search.sample_vectors(space, 10, seed=0, cnn="bulba", in_size=60)
    assert [v.id for v in again] == [v.id for v in search.sample_vectors(space, 10, seed=0, cnn="bulba", in_size=60)]


def test_vectors_invalid_for_a_small_input_are_redrawn_deterministically():
    space = search.SearchSpace()
    big = search.sample_vectors(space, 40, seed=0, cnn="squirtle", in_size=60)
    small = search.sample_vectors(space, 40, seed=0, cnn="squirtle", in_size=10)
    redrawn = [i for i, v in enumerate(small) if v.redraws]
    assert redrawn, "a 10x10 input should reject some pooling chains"
    for i, (b, s) in enumerate(zip(big, small)):
        s.arch.feature_map_sizes()  # buildable
        if s.redraws:
            assert "redrawn" in s.origin
            with pytest.raises(SpecError):  # the shared draw really did not fit
                ArchSpec(**{**b.arch.to_dict(), "in_size": 10})
        else:
            assert s.secondary() == b.secondary()
    assert [v.id for v in small] == [v.id for v in search.sample_vectors(space, 40, seed=0, cnn="squirtle", in_size=10)]


# --------------------------------------------------------------------------- perturbations


def test_perturbations_follow_the_tables():
    table = search.PERTURB
    assert table.conv_channels == (-32, -24, -16, -8, 0, 0, 8, 16, 24, 32)
    assert table.fc_features == (-230, -206, -160, -128, -86, -62, -34, -18, 0, 0, 18, 34, 62, 86)
    assert table.dropout == (-0.10, -0.05, -0.05, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05, 0.10)
    assert table.leaky_slope == (0.005, 0.008, 0.010, 0.013, 0.018, 0.028)
    rng = np.random.default_rng(0)
    parent = search.Vector(ArchSpec(cnn="charma", in_size=60, conv_channels=(188, 156, 340), fc_features=(3634, 2816),
                                    bn_momentum=0.5, dropout=0.40), 32, 6e-5, "mel", 60)
    n = 3000
    kids = [search.perturb(parent, rng) for _ in range(n)]
    coc = Counter(k.arch.conv_channels[i] - parent.arch.conv_channels[i] for k in kids for i in range(3))
    fc = Counter(k.arch.fc_features[i] - parent.arch.fc_features[i] for k in kids for i in range(2))
    dp = Counter(round(k.arch.dropout - parent.arch.dropout, 6) for k in kids)
    bn = Counter(round(k.arch.bn_momentum - parent.arch.bn_momentum, 6) for k in kids)
    assert set(coc) == set(table.conv_channels) and set(fc) == set(table.fc_features)
    assert set(dp) == {round(d, 6) for d in table.dropout} and set(bn) == {-0.1, 0.0, 0.1}
    assert {k.arch.leaky_slope for k in kids} == set(table.leaky_slope)
    # uniform over the table entries: 0 is listed twice of ten (channels), four of ten (dropout), three of five (BN)
    assert abs(coc[0] / (3 * n) - 0.2) < 0.03 and abs(dp[0.0] / n - 0.4) < 0.04 and abs(bn[0.0] / n - 0.6) < 0.04
    for k in kids:  # fixed: kernel sizes, pooling, batch, LR (and the feature)
        a = k.arch
        assert (a.conv_kernels, a.pool_kernels, a.pool_strides) == (parent.arch.conv_kernels, parent.arch.pool_kernels, parent.arch.pool_strides)
        assert (k.batch_size, k.lr, k.feature, k.size, a.cnn) == (32, 6e-5, "mel", 60, "charma")
        assert k.origin == f"perturbed {parent.id}"
    # BN momentum 0.1 stays 0.1 or becomes 0.2; the top of the grid is clipped
    low = search.Vector(parent.arch.with_(bn_momentum=0.1), 32, 6e-5, "mel", 60)
    assert {search.perturb(low, rng).arch.bn_momentum for _ in range(300)} == {0.1, 0.2}
    high = search.Vector(parent.arch.with_(bn_momentum=0.9, dropout=0.25), 32, 6e-5, "mel", 60)
    kids = [search.perturb(high, rng) for _ in range(300)]
    assert {k.arch.bn_momentum for k in kids} == {0.8, 0.9} and {k.arch.dropout for k in kids} == {0.15, 0.2, 0.25, 0.3, 0.35}
    # the slope only changes CharmaNET
    squirtle = search.Vector(parent.arch.with_(cnn="squirtle"), 32, 6e-5, "mel", 60)
    assert {search.perturb(squirtle, rng).arch.leaky_slope for _ in range(100)} == {0.01}
    # a batch of distinct neighbours, none equal to the parent, reproducible
    batch = search.perturbations(parent, 10, seed=0)
    assert len({v.id for v in batch} | {parent.id}) == 11
    assert [v.id for v in batch] == [v.id for v in search.perturbations(parent, 10, seed=0)]


# --------------------------------------------------------------------------- scoring


def test_resume_never_recomputes_a_finished_fold(monkeypatch, tmp_path):
    fs = make_features()
    vector = tiny_vector()
    rules = stopping.NONE
    kw = dict(folds=3, seed=0, epochs=3, workdir=tmp_path / "w", device="cpu")

    fit = CountingFit(monkeypatch)
    first = search.score_vector(vector, fs, None, rules, **kw)
    assert len(fit.calls) == 3 and len(first.folds) == 3 and first.complete and first.trained_folds == 3
    assert sorted(p.name for p in (tmp_path / "w" / vector.id).iterdir()) == ["context.json", "fold0.json", "fold1.json", "fold2.json"]

    fit.calls.clear()
    again = search.score_vector(vector, fs, None, rules, **kw)
    assert fit.calls == [] and again.trained_folds == 0
    assert again.summary() == first.summary()

    (tmp_path / "w" / vector.id / "fold2.json").unlink()
    third = search.score_vector(vector, fs, None, rules, **kw)
    assert len(fit.calls) == 1 and third.trained_folds == 1
    assert third.folds[2].macro_f1 == first.folds[2].macro_f1  # same seeds, same result

    # other settings in the same workdir are refused, not mixed in
    with pytest.raises(search.SearchError, match="other settings"):
        search.score_vector(vector, fs, None, rules, **{**kw, "seed": 1})


def test_a_killed_fold_resumes_from_its_checkpoint(monkeypatch, tmp_path):
    fs = make_features()
    vector = tiny_vector()
    kw = dict(folds=2, seed=0, epochs=4, device="cpu", keep_checkpoints=False)
    whole = search.score_vector(vector, fs, None, stopping.NONE, workdir=tmp_path / "a", **kw)

    def kill_second_fold_at_epoch_2(call, cfg, fit_kw):
        if call == 2:
            def on_epoch(record):
                if record.epoch == 2:
                    raise KeyboardInterrupt
            fit_kw = {**fit_kw, "on_epoch": on_epoch}
        return fit_kw

    fit = CountingFit(monkeypatch, kill_second_fold_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        search.score_vector(vector, fs, None, stopping.NONE, workdir=tmp_path / "b", **kw)
    vdir = tmp_path / "b" / vector.id
    assert (vdir / "fold0.json").is_file() and not (vdir / "fold0.ckpt").exists()  # finished: checkpoint gone
    assert (vdir / "fold1.ckpt").is_file() and not (vdir / "fold1.json").exists()
    fit.calls.clear()
    resumed = search.score_vector(vector, fs, None, stopping.NONE, workdir=tmp_path / "b", **kw)
    assert len(fit.calls) == 1 and not (vdir / "fold1.ckpt").exists()
    assert [f.history for f in resumed.folds] == [f.history for f in whole.folds]  # bit for bit on CPU


def test_rule_a_abandons_the_vector_and_ranks_it_last(monkeypatch, tmp_path):
    fs = make_features()
    fit = CountingFit(monkeypatch)
    hopeless = stopping.Rules(a=[(1, 0.99, "A1")], b=True, c=None)
    result = search.score_vector(tiny_vector(), fs, None, hopeless, folds=3, epochs=5, workdir=tmp_path, device="cpu")
    assert len(fit.calls) == 1 and len(result.folds) == 1
    assert result.abandoned and result.abandoned_by == "A1" and not result.complete
    assert result.folds[0].epochs == 1 and result.folds[0].abandoned
    row = result.to_row()
    assert row["abandoned"] and row["stopped_by"] == "A1" and row["folds"] == 1
    # reused from disk, the abandonment is the same
    fit.calls.clear()
    again = search.score_vector(tiny_vector(), fs, None, hopeless, folds=3, epochs=5, workdir=tmp_path, device="cpu")
    assert fit.calls == [] and again.abandoned and again.abandoned_by == "A1"
    # an abandoned vector never outranks a finished one, whatever its F1
    good = {**row, "id": "b" * 12, "abandoned": False, "macro_f1": 0.01}
    bad = {**row, "macro_f1": 0.99}
    assert [r["id"] for r in search.best([bad, good], 2)] == [good["id"], bad["id"]]


def test_rule_c_abandons_after_a_whole_fold(monkeypatch, tmp_path):
    fit = CountingFit(monkeypatch)
    weak = stopping.Rules(a=(), b=False, c=(0.99, 0.99))
    result = search.score_vector(tiny_vector(), make_features(), None, weak, folds=3, epochs=2, workdir=tmp_path, device="cpu")
    assert len(fit.calls) == 1 and result.abandoned and result.abandoned_by == "C"
    assert result.folds[0].c_rule == "C" and result.folds[0].epochs == 2
    assert json.loads((tmp_path / tiny_vector().id / "fold0.json").read_text())["c_rule"] == "C"


def test_a_b_stop_caps_the_later_folds(monkeypatch, tmp_path):
    """B1 at epoch 68 in fold 0 makes 68 the maximum of folds 1 and 2 (a fake fit
    feeds the stopper a history whose validation loss rises from epoch 52)."""
    caps = []

    def fake_fit(model, train, val, cfg, *, stopper=None, **kw):
        caps.append(cfg.epochs)
        history = []
        for epoch in range(1, cfg.epochs + 1):
            loss = 1.0 if epoch <= 52 else 1.0 + 0.01 * (epoch - 52)
            f1 = 0.3 + 0.004 * epoch  # moves more than 1 point per 4 epochs: B2 stays quiet
            history.append(training.EpochRecord(epoch, 0.5, loss, f1, f1))
            decision = stopper(history)
            if decision is not None:
                return training.FitResult(history, 52, 1.0, {}, decision.rule, decision.scope == "vector", 0.1)
        return training.FitResult(history, 52, 1.0, {}, None, False, 0.1)

    monkeypatch.setattr(training, "fit", fake_fit)
    result = search.score_vector(tiny_vector(), make_features(), None, stopping.STAGE1.with_c(None), folds=3, epochs=300,
                                 workdir=tmp_path, device="cpu")
    assert caps == [300, 68, 68]
    assert [f.stopped_by for f in result.folds] == ["B1", "B1", "B1"] and result.stopped_by == "B1 B1 B1"
    assert result.complete and result.summary()["epochs"] == 68


class FakeTracker:
    """The tracker protocol (ser.tracking.Tracker's shape), recording what it is told."""

    def __init__(self):
        self.events = []

    @contextlib.contextmanager
    def run(self, name, kind, params, tags):
        self.events.append(("start", kind, name))
        yield self
        self.events.append(("end", kind, name))

    def log_metrics(self, metrics, step):
        self.events.append(("metrics", tuple(sorted(metrics)), step))

    def epoch_callback(self):
        return lambda record: self.events.append(("epoch", record.epoch))

    def runs(self):
        return [(e[0], e[1]) for e in self.events if e[0] in ("start", "end")]


def test_tracker_gets_one_run_per_vector_and_per_fold(tmp_path):
    tracker = FakeTracker()
    search.score_vector(tiny_vector(), make_features(), None, stopping.NONE, folds=2, epochs=2, workdir=tmp_path, device="cpu", tracker=tracker)
    assert tracker.runs() == [("start", "vector"), ("start", "fold"), ("end", "fold"), ("start", "fold"), ("end", "fold"), ("end", "vector")]
    assert [e[1] for e in tracker.events if e[0] == "epoch"] == [1, 2, 1, 2]
    assert any(e[0] == "metrics" and "macro_f1" in e[1] for e in tracker.events)
    # a stage wraps its vectors in a "stage" run
    tracker = FakeTracker()
    recipe = tiny_recipe()
    search.run_stage(recipe.stage(1), {("mel", 30): make_features()}, recipe=recipe, workdir=tmp_path / "s", device="cpu",
                     tracker=tracker, progress=False)
    runs = tracker.runs()
    assert runs[0] == ("start", "stage") and runs[-1] == ("end", "stage") and runs.count(("start", "fold")) == recipe.folds
    assert any(e[0] == "metrics" and "listed" in e[1] for e in tracker.events)


# --------------------------------------------------------------------------- ranking table


def test_ranking_table_has_the_studys_columns_and_round_trips(tmp_path):
    fs = make_features()
    result = search.score_vector(tiny_vector(), fs, None, stopping.NONE, folds=2, epochs=1, workdir=tmp_path / "w", device="cpu", stage=1)
    row = result.to_row()
    other = {**row, "id": "0" * 12, "macro_f1": -1.0}  # a fake row only for sorting
    rows = search.sort_ranking([other, row])
    csv_path, md_path = search.write_ranking(rows[:1], tmp_path / "out", title="t", notes=["note"])
    with csv_path.open() as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == search.COLUMNS
    for col in ("id", "cnn", "feature", "N", "COC1", "COC2", "COC3", "CKS1", "PKS1", "PS1", "BNM", "DP", "FCOC1", "FCOC2", "slope",
                "batch", "LR", "seconds", "epochs", "macro_f1", "macro_f1_std", "accuracy", "accuracy_std", "stopped_by"):
        assert col in header
    md = md_path.read_text()
    for col in ("ID", "CNN", "Feature", "COC", "CKS", "PKS", "PS", "BNM", "DP", "FCOC", "Slope", "Batch", "LR", "Time (s)", "Epochs",
                "Macro F1 %", "Accuracy %", "Stopped by"):
        assert f"| {col} |" in md or f"| {col} " in md
    assert "4 4 4" in md and " ± " in md
    back = search.load_ranking(csv_path)
    assert len(back) == 1 and back[0]["id"] == row["id"] and back[0]["rank"] == 1
    assert math.isclose(back[0]["macro_f1"], row["macro_f1"], rel_tol=1e-5)
    assert search.vector_from_row(back[0]) == replace(tiny_vector(), origin="")
    assert search.best(back, 4) == back


# --------------------------------------------------------------------------- stages


def test_missing_feature_sets_are_skipped_and_stage_1_needs_one(tmp_path):
    recipe = tiny_recipe()
    st = replace(recipe.stage(1), features=("mel", "chroma"), sizes=(30,))
    combos, missing = st.combinations([("mel", 30)])
    assert [(c.feature, c.size) for c in combos] == [("mel", 30)] and [(c.feature, c.size) for c in missing] == [("chroma", 30)]
    with pytest.raises(search.SearchError, match="none of its combinations"):
        search.run_stage(replace(st, features=("chroma",)), {("mel", 30): make_features()}, recipe=recipe, workdir=tmp_path, progress=False)
    with pytest.raises(search.SearchError, match="previous"):
        search.run_stage(recipe.stage(3), {("mel", 30): make_features()}, recipe=recipe, workdir=tmp_path, progress=False)


def test_recipe_errors_are_explained(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nstages: {1: {kind: random, vectorz: 3}}\n")
    with pytest.raises(search.SearchError, match="vectorz"):
        search.load_recipe(bad)
    bad.write_text("name: x\nspace: {conv_channels: {start: 1}}\nstages: {1: {kind: random}}\n")
    with pytest.raises(search.SearchError, match="start, stop and step"):
        search.load_recipe(bad)
    with pytest.raises(search.SearchError, match="does not exist"):
        search.load_recipe(tmp_path / "nope.yaml")


def test_four_stages_end_to_end_produce_a_winner_and_resume(monkeypatch, tmp_path):
    fs = make_features()
    recipe = tiny_recipe()
    fit = CountingFit(monkeypatch)
    logs = []
    outcome = search.run_search(recipe, {("mel", 30): fs}, out=tmp_path / "out", device="cpu", progress=False, log=logs.append)
    s1, s2, s3, s4 = outcome.stages
    assert [len(s.results) for s in outcome.stages] == [1, 1, 2, 2]
    assert len(s2.ranking) == 2 and len(s3.ranking) == 4  # merged
    parents = {r["id"] for r in search.best(s2.ranking, 2)}
    assert all(r.vector.origin.split()[-1] in parents for r in s3.results)
    assert {r.vector.id for r in s4.results} == {r["id"] for r in search.best(s3.ranking, 2)}
    assert all(f.stopped_by == "max_epochs" and f.epochs == 2 for r in s4.results for f in r.folds)  # no early stopping
    n_fits = len(fit.calls)
    assert n_fits == 6 * recipe.folds

    out = tmp_path / "out"
    for n in (1, 2, 3, 4):
        assert (out / f"stage{n}" / "ranking.csv").is_file() and (out / f"stage{n}" / "ranking.md").is_file()
    arch, train = search.load_winner(out / "winner.json")
    assert isinstance(arch, ArchSpec) and arch.in_size == 30 and arch.n_classes == 7
    assert arch.to_dict() == search.vector_from_row(outcome.winner).arch.to_dict()
    assert set(json.loads((out / "winner.json").read_text())) == {"arch", "train"}  # what `ser train --config` reads
    meta = json.loads((out / "winner_meta.json").read_text())
    assert meta["feature"]["kind"] == "mel" and meta["feature"]["size"] == 30
    assert meta["split"]["protocol"] == "random" and meta["split"]["seed"] == 0 and meta["recipe_hash"] == recipe.hash()
    # only the training side was searched: 80% of the rows, never a test row
    search_json = json.loads((out / "search.json").read_text())
    assert search_json["split"]["rows"]["mel-30"]["train_rows"] == int(0.8 * len(fs))
    train_idx, _ = search.search_split({("mel", 30): fs}, "random", 0, 0.2)
    ctx = json.loads(next((tmp_path / "out" / "work" / "stage1").glob("*/context.json")).read_text())
    assert ctx["data"] == search.data_fingerprint(fs, train_idx[("mel", 30)])

    # a rerun recomputes nothing and gives the same winner
    fit.calls.clear()
    again = search.run_search(recipe, {("mel", 30): fs}, out=tmp_path / "out", device="cpu", progress=False, log=logs.append)
    assert fit.calls == [] and again.winner["id"] == outcome.winner["id"]
