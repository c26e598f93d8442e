"""The search (METHOD.md sections 5-6): k-fold scoring with resume and early
stopping, the ranking table it writes, and the four stages end to end on a tiny
synthetic feature set. Grids and perturbations: tests/test_search_space.py."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from ser.study import ranking, recipes, search, search_space, splits, stopping, training
from ser.data.dataset import FeatureSet
from ser.data.features import FeatureSpec
from ser.data.labels import label_set
from ser.study.models import ArchSpec

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


def tiny_vector(size: int = 30, **arch) -> search_space.Vector:
    spec = dict(cnn="squirtle", in_size=size, conv_channels=(4, 4, 4), conv_kernels=(3, 3, 3), pool_kernels=(2, 2, 2),
                pool_strides=(2, 2, 2), fc_features=(16, 16), bn_momentum=0.1, dropout=0.25)
    spec.update(arch)
    return search_space.Vector(ArchSpec(**spec), 16, 3e-3, "mel", size)


def tiny_recipe() -> recipes.Recipe:
    """The demo recipe, smaller still: 1 vector per combination/parent, 2 epochs, 2% width."""
    recipe = recipes.load_recipe("demo").with_overrides(trials=1, epochs=2)
    return replace(recipe, scale=0.02)


class CountingFit:
    """Wraps ser.study.training.fit and counts its calls."""

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
    with pytest.raises(search_space.SearchError, match="other settings"):
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
    assert [r["id"] for r in ranking.best([bad, good], 2)] == [good["id"], bad["id"]]


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
    """The tracker protocol (ser.adapters.tracking.Tracker's shape), recording what it is told."""

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
    rows = ranking.sort_ranking([other, row])
    csv_path, md_path = ranking.write_ranking(rows[:1], tmp_path / "out", title="t", notes=["note"])
    with csv_path.open() as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == ranking.COLUMNS
    for col in ("id", "cnn", "feature", "N", "COC1", "COC2", "COC3", "CKS1", "PKS1", "PS1", "BNM", "DP", "FCOC1", "FCOC2", "slope",
                "batch", "LR", "seconds", "epochs", "macro_f1", "macro_f1_std", "accuracy", "accuracy_std", "stopped_by"):
        assert col in header
    md = md_path.read_text()
    for col in ("ID", "CNN", "Feature", "COC", "CKS", "PKS", "PS", "BNM", "DP", "FCOC", "Slope", "Batch", "LR", "Time (s)", "Epochs",
                "Macro F1 %", "Accuracy %", "Stopped by"):
        assert f"| {col} |" in md or f"| {col} " in md
    assert "4 4 4" in md and " ± " in md
    back = ranking.load_ranking(csv_path)
    assert len(back) == 1 and back[0]["id"] == row["id"] and back[0]["rank"] == 1
    assert math.isclose(back[0]["macro_f1"], row["macro_f1"], rel_tol=1e-5)
    assert ranking.vector_from_row(back[0]) == replace(tiny_vector(), origin="")
    assert ranking.best(back, 4) == back


# --------------------------------------------------------------------------- stages


def test_missing_feature_sets_are_skipped_and_stage_1_needs_one(tmp_path):
    recipe = tiny_recipe()
    st = replace(recipe.stage(1), features=("mel", "chroma"), sizes=(30,))
    combos, missing = st.combinations([("mel", 30)])
    assert [(c.feature, c.size) for c in combos] == [("mel", 30)] and [(c.feature, c.size) for c in missing] == [("chroma", 30)]
    with pytest.raises(search_space.SearchError, match="none of its combinations"):
        search.run_stage(replace(st, features=("chroma",)), {("mel", 30): make_features()}, recipe=recipe, workdir=tmp_path, progress=False)
    with pytest.raises(search_space.SearchError, match="previous"):
        search.run_stage(recipe.stage(3), {("mel", 30): make_features()}, recipe=recipe, workdir=tmp_path, progress=False)


def test_four_stages_end_to_end_produce_a_winner_and_resume(monkeypatch, tmp_path):
    fs = make_features()
    recipe = tiny_recipe()
    fit = CountingFit(monkeypatch)
    logs = []
    outcome = search.run_search(recipe, {("mel", 30): fs}, out=tmp_path / "out", device="cpu", progress=False, log=logs.append)
    s1, s2, s3, s4 = outcome.stages
    assert [len(s.results) for s in outcome.stages] == [1, 1, 2, 2]
    assert len(s2.ranking) == 2 and len(s3.ranking) == 4  # merged
    parents = {r["id"] for r in ranking.best(s2.ranking, 2)}
    assert all(r.vector.origin.split()[-1] in parents for r in s3.results)
    assert {r.vector.id for r in s4.results} == {r["id"] for r in ranking.best(s3.ranking, 2)}
    assert all(f.stopped_by == "max_epochs" and f.epochs == 2 for r in s4.results for f in r.folds)  # no early stopping
    n_fits = len(fit.calls)
    assert n_fits == 6 * recipe.folds

    out = tmp_path / "out"
    for n in (1, 2, 3, 4):
        assert (out / f"stage{n}" / "ranking.csv").is_file() and (out / f"stage{n}" / "ranking.md").is_file()
    # stage 4 states its winner rule and shows the curves it rests on
    stage4_md = (out / "stage4" / "ranking.md").read_text()
    assert "Winner rule" in stage4_md and "curves.png" in stage4_md
    assert (out / "stage4" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "stage3" / "curves.png").exists()
    arch, train = search.load_winner(out / "winner.json")
    assert isinstance(arch, ArchSpec) and arch.in_size == 30 and arch.n_classes == 7
    assert arch.to_dict() == ranking.vector_from_row(outcome.winner).arch.to_dict()
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


def test_final_model_is_tested_on_the_rows_the_search_held_out(tmp_path):
    """The search splits on its first feature set and holds those sources out of every
    set; the winner's test rows must be exactly them, never a fresh split of its own
    set (which here puts utterances the search trained on into the test side)."""
    from tests.helpers import banded_feature_set

    mel = banded_feature_set(label_set("english"), 140)
    order = np.random.default_rng(5).permutation(len(mel))
    chroma = replace(mel.subset(order), spec=FeatureSpec(kind="chroma", size=30, sample_rate=16000))
    train_idx, desc = search.search_split({("mel", 30): mel, ("chroma", 30): chroma}, "random", 0, 0.2)
    assert desc["reference"] == "chroma-30"  # the winner below (mel) is not the set the split was drawn on
    searched = set(mel.source_id[train_idx[("mel", 30)]])
    held_out = set(desc["test_source_ids"])
    train, test = splits.held_out_rows(mel, held_out)
    assert set(mel.source_id[test]) == held_out and not held_out & searched
    assert set(train) == set(train_idx[("mel", 30)]) and not set(train) & set(test)
    assert len(train) + len(test) == len(mel)
    _, fresh = splits.train_test(mel, 0.2, seed=0, protocol="random")
    assert set(mel.source_id[fresh]) & searched  # what re-splitting would have done
    (tmp_path / "search.json").write_text(json.dumps({"split": desc}))
    assert search.read_held_out(tmp_path / "search.json") == sorted(held_out)
    (tmp_path / "old.json").write_text(json.dumps({"split": {"test_sources": 28}}))
    with pytest.raises(search.SearchError, match="test_source_ids"):
        search.read_held_out(tmp_path / "old.json")


def _scored(f1s: list[float], accs: list[float], n_folds: int = 5, abandoned: bool = False) -> search.VectorResult:
    vector = search_space.sample_vectors(search_space.SearchSpace(), 1, seed=0, cnn="squirtle", in_size=30)[0]
    folds = [search.FoldResult(k, 80, 20, 300, 60, 50, "B1", False, None, 1.0, 1.2, a, f, 1.0) for k, (f, a) in enumerate(zip(f1s, accs))]
    return search.VectorResult(vector, folds, n_folds, abandoned=abandoned)


@pytest.mark.parametrize(("f1", "acc", "listed"), [
    (0.60, 0.60, True),      # exactly at both thresholds: listed
    (0.5999, 0.70, False),   # F1 just under
    (0.70, 0.5999, False),   # accuracy just under: both must pass
    (0.664, 0.661, True),
])
def test_listing_thresholds_at_the_boundary(f1, acc, listed):
    result = _scored([f1] * 5, [acc] * 5)
    assert search.qualifies(result, (0.60, 0.60)) is listed


def test_an_incomplete_or_abandoned_vector_is_never_listed():
    assert not search.qualifies(_scored([0.9] * 4, [0.9] * 4), (0.60, 0.60))  # 4 of 5 folds
    assert not search.qualifies(_scored([0.9] * 5, [0.9] * 5, abandoned=True), (0.60, 0.60))
    assert search.qualifies(_scored([0.9] * 5, [0.9] * 5), (0.60, 0.60))
