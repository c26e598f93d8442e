"""Speaker-independent cross-validation (ser.study.crossval, `ser cv`) on a synthetic corpus."""

import json

import numpy as np
import pytest
import torch
import yaml

from ser.data import dataset
from ser.study import crossval, splits
from ser.data.corpora import scan, synthetic
from ser.data.features import FeatureSpec
from tests.servers import mlflow_server, s3_server, tracking_env  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def synth_logmel(tmp_path_factory):
    """Three synthetic speakers, 7 emotions, 8 utterances each per speaker: logmel features
    as the plus recipe extracts them."""
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate(root, "ravdess", per_class=24, speakers=3, seed=1, spread=0.5)
    rows = [vars(r) for r in scan("synthetic", root).rows]
    spec = crossval.load_recipe("plus").features
    fs, rep = dataset.build(rows, spec, workers=1, progress=False)
    assert not rep.problems
    return fs


def narrow(recipe: crossval.CVRecipe, epochs: int) -> crossval.CVRecipe:
    """The recipe with a quarter of its channels and a short budget: for tests of what
    ser cv does with its runs (ensembles, ablation rows), not of what the network learns."""
    return recipe.with_(model={**recipe.model, "channels": [8, 16, 32, 64]}, train=recipe.train.with_(epochs=epochs))


def test_recipes_load_validate_and_round_trip(tmp_path):
    plus, study = crossval.load_recipe("plus"), crossval.load_recipe("study")
    assert plus.checkpoint == "last" and not plus.optimistic and plus.augment is not None
    assert study.checkpoint == "test" and study.optimistic and study.model == {"preset": "optimal-english"}
    assert plus.features.kind == "logmel" and plus.features.sample_rate == 16000
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**plus.to_dict(), "name": "mine"}))
    assert crossval.load_recipe(path).key() == plus.key()
    with pytest.raises(crossval.CVError, match="unknown recipe keys"):
        crossval.CVRecipe.from_dict({**plus.to_dict(), "epochz": 3})
    with pytest.raises(crossval.CVError, match="logmel"):
        crossval.CVRecipe.from_dict({**plus.to_dict(), "features": study.features.to_dict()})
    with pytest.raises(crossval.CVError, match="neither"):
        crossval.load_recipe("nonesuch")


def test_the_last_rule_trains_every_training_speaker_and_scores_only_the_test(synth_logmel):
    recipe = crossval.load_recipe("plus")
    assert recipe.checkpoint == "last"
    recipe = narrow(recipe, epochs=2)
    train, test = splits.speaker_folds(synth_logmel)[0]
    run = crossval.train_fold(synth_logmel, train, test, recipe, seed=0)
    assert run.n_val == 0 and run.fit.best_epoch == 2 and np.isnan(run.fit.best_val_loss)
    assert len(run.predictions) == len(test) and np.array_equal(run.y_true, synth_logmel.labels[test])
    assert "fixed rule" in crossval.CHECKPOINT_NOTES["last"] and "optimistic" in crossval.CHECKPOINT_NOTES["test"]


def test_the_validation_rule_holds_out_whole_training_speakers(synth_logmel, tmp_path):
    recipe = narrow(crossval.load_recipe("plus"), epochs=2).with_(checkpoint="validation")
    result = crossval.run(synth_logmel, recipe, tmp_path, seeds=(0,), progress=False, log=lambda _: None)
    keys = splits.speaker_keys(synth_logmel)
    for fold in result.folds:  # two training speakers: one trains, one chooses the epoch, none is tested
        assert fold.n_val == int((keys != fold.test_speakers[0]).sum()) // 2 and 1 <= fold.best_epoch <= 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoint"] == "validation" and "validation speakers" in summary["note"]


def test_patience_stops_after_evaluations_without_a_lower_loss():
    from ser.study.training import EpochRecord

    stop = crossval.patience_stopper(2)
    history = [EpochRecord(1, 1.0, 1.0), EpochRecord(2, 1.0, 0.8), EpochRecord(3, 1.0, 0.9)]
    assert stop(history) is None
    history.append(EpochRecord(4, 1.0, 0.85))
    assert stop(history).rule == "patience"
    assert crossval.patience_stopper(0) is None


def test_plus_learns_a_held_out_synthetic_speaker_and_resumes(synth_logmel, tmp_path):
    recipe = crossval.load_recipe("plus")  # as shipped (the last epoch kept), a shorter budget
    recipe = recipe.with_(train=recipe.train.with_(epochs=20))
    logs = []
    result = crossval.run(synth_logmel, recipe, tmp_path / "cv", seeds=(0,), progress=False, log=logs.append)
    assert len(result.folds) == 3  # leave-one-speaker-out over 3 speakers
    keys = splits.speaker_keys(synth_logmel)
    for fold in result.folds:
        assert len(fold.test_speakers) == 1 and fold.n_val == 0
    chance = 1 / 7
    assert result.summary["ua"]["mean"] > 2.5 * chance, result.summary
    out = tmp_path / "cv"
    for name in ("recipe.yaml", "folds.md", "folds.csv", "summary.json", "confusion_matrix.png", "ensemble.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == "last" and "fixed rule" in summary["note"]
    assert np.sum(summary["confusion_matrix"]) == len(synth_logmel)
    # A second run redoes nothing: every fold is read back.
    logs2 = []
    again = crossval.run(synth_logmel, recipe, out, seeds=(0,), progress=False, log=logs2.append)
    assert all("done before" in line for line in logs2) and again.summary == result.summary
    # The ensemble of fold models serves as one model, over the whole utterance.
    from ser.study import models
    from ser.study.training import evaluate

    ens = models.load_bundle(out / "ensemble.pt")
    assert isinstance(ens.arch, models.EnsembleSpec) and len(ens.arch.members) == 3
    assert all(m.speeds == (0.95, 1.0, 1.05) for m in ens.arch.members)  # the recipe's speed copies are served too
    assert evaluate(ens.model, synth_logmel).accuracy > 2.5 * chance
    assert keys.size == len(synth_logmel)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_plus_trains_on_cuda_and_its_models_load_on_the_cpu(synth_logmel, tmp_path):
    """What a GPU node pool runs: the same folds on CUDA learn the held-out speaker, and
    the fold models and the ensemble they make load and serve on a CPU-only machine."""
    recipe = crossval.load_recipe("plus")
    recipe = recipe.with_(train=recipe.train.with_(epochs=20))
    result = crossval.run(synth_logmel, recipe, tmp_path / "cv", seeds=(0,), device="cuda", progress=False, log=lambda _: None)
    assert result.summary["ua"]["mean"] > 2.5 / 7, result.summary
    from ser.study import models
    from ser.study.training import evaluate

    ens = models.load_bundle(tmp_path / "cv" / "ensemble.pt", "cpu")
    assert next(ens.model.parameters()).device.type == "cpu"
    assert evaluate(ens.model, synth_logmel, device="cpu").accuracy > 2.5 / 7


def test_seed_ensemble_averages_each_folds_seeds_on_its_test_rows():
    def fold(seed, probs):
        return crossval.FoldResult(fold=0, seed=seed, test_speakers=["s"], n_train=4, n_val=0, n_test=3, ua=0, wa=0, macro_f1=0,
                                   best_epoch=1, epochs_run=1, seconds=0, y_true=[0, 1, 2], y_pred=[], y_prob=probs)

    # Each seed alone gets one row wrong; their mean gets all three right.
    a = fold(0, [[0.6, 0.4, 0.0], [0.5, 0.4, 0.1], [0.0, 0.3, 0.7]])
    b = fold(1, [[0.6, 0.0, 0.4], [0.0, 0.9, 0.1], [0.0, 0.55, 0.45]])
    ens = crossval.seed_ensemble([a, b], 3)
    assert ens["folds"] == [{"fold": 0, "seeds": 2, "ua": 1.0, "wa": 1.0, "macro_f1": 1.0}]
    assert ens["summary"]["ua"]["mean"] == 1.0 and ens["summary"]["ua"]["n"] == 1
    assert crossval.seed_ensemble([a], 3) is None


def test_seeds_of_a_fold_are_scored_as_one_ensemble_and_old_folds_are_backfilled(synth_logmel, tmp_path):
    from ser.study import metrics, models
    from ser.study.training import evaluate

    recipe = narrow(crossval.load_recipe("plus"), epochs=2)
    out = tmp_path / "cv"
    result = crossval.run(synth_logmel, recipe, out, seeds=(0, 1), progress=False, log=lambda _: None)
    assert len(result.folds) == 6 and result.seed_ensemble is not None
    train, test = splits.speaker_folds(synth_logmel)[0]
    probs = [evaluate(models.load_bundle(out / f"fold-00-seed-{s}" / "model.pt").model, synth_logmel.subset(test)).probabilities
             for s in (0, 1)]
    expected = metrics.scores(synth_logmel.labels[test], np.mean(probs, axis=0).argmax(1))
    assert result.seed_ensemble["folds"][0]["ua"] == pytest.approx(expected.ua)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed_ensemble"]["summary"] == result.seed_ensemble["summary"]
    assert "seeds as one ensemble" in (out / "folds.md").read_text()
    # A fold finished before results kept probabilities gets them from its saved model, not by retraining.
    done = out / "fold-00-seed-1" / "result.json"
    data = json.loads(done.read_text())
    kept = data.pop("y_prob")
    done.write_text(json.dumps(data))
    logs = []
    again = crossval.run(synth_logmel, recipe, out, seeds=(0, 1), progress=False, log=logs.append)
    assert sum("done before" in line for line in logs) == 6
    assert np.allclose(json.loads(done.read_text())["y_prob"], kept, atol=1e-5)
    assert again.seed_ensemble["summary"] == result.seed_ensemble["summary"]


def test_study_recipe_says_its_scores_are_optimistic(tmp_path):
    from tests.helpers import banded_feature_set

    fs = banded_feature_set(("a", "b", "c"), 60)
    fs.spec = FeatureSpec(kind="mel", size=30)
    recipe = crossval.load_recipe("study")
    recipe = recipe.with_(features=FeatureSpec(kind="mel", size=30), model={"cnn": "squirtle", "conv_channels": [8, 8, 8], "fc_features": [16, 16]},
                          train=recipe.train.with_(epochs=2))
    result = crossval.run(fs, recipe, tmp_path, folds=3, progress=False, log=lambda _: None)
    assert "optimistic" in (tmp_path / "folds.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "optimistic" in summary["note"]
    assert len(result.folds) == 3
    # Test rows were scored every epoch: the same runs' last epoch is the honest figure beside it.
    for fold in result.folds:
        assert [h["epoch"] for h in fold.history] == [1, 2] and fold.best_epoch in (1, 2)
        best = fold.history[fold.best_epoch - 1]
        assert best["ua"] == pytest.approx(fold.ua) and best["val_loss"] == min(h["val_loss"] for h in fold.history)
    last = [f.history[-1]["ua"] for f in result.folds]
    assert summary["last_epoch"]["summary"]["ua"]["mean"] == pytest.approx(np.mean(last))
    assert "at their last epoch" in (tmp_path / "folds.md").read_text()


def test_feature_spec_mismatch_is_a_clear_error(synth_logmel, tmp_path):
    with pytest.raises(crossval.CVError, match="extract it with the recipe's features"):
        crossval.run(synth_logmel, crossval.load_recipe("study"), tmp_path, progress=False)


def test_ablation_turns_each_switch_off_alone_on_the_same_folds(synth_logmel, tmp_path):
    recipe = narrow(crossval.load_recipe("plus"), epochs=2)
    switches = {"mixup": {"augment.mixup": 0.0}, "mean pooling": {"model.pooling": "attention"}}
    seen = []

    def fs_for(variant):
        seen.append(variant)
        return synth_logmel

    rows = crossval.ablation(fs_for, recipe, tmp_path, folds=3, switches=switches, progress=False, log=lambda _: None)
    assert [r["switched off"] for r in rows] == ["(none: the recipe)", "mixup", "mean pooling"]
    assert seen[1].augment.mixup == 0.0 and seen[1].model["pooling"] == "mean"
    assert seen[2].model["pooling"] == "attention" and seen[2].augment.mixup == recipe.augment.mixup
    assert rows[0]["delta_ua"] == "+0.0 +- 0.0" and rows[0]["lower_on"] == "0 of 3" and all(r["runs"] == 3 for r in rows)
    base = json.loads((tmp_path / "variant-01" / "summary.json").read_text())  # mixup off, fold by fold
    recipe_folds = {f["fold"]: f["ua"] for f in crossval.run(synth_logmel, recipe, tmp_path / "variant-00", folds=3, progress=False,
                                                              log=lambda _: None).to_dict()["folds"]}
    paired = [100 * (f["ua"] - recipe_folds[f["fold"]]) for f in base["folds"]]
    assert rows[1]["delta_ua"] == f"{np.mean(paired):+.1f} +- {np.std(paired):.1f}"
    assert rows[1]["lower_on"] == f"{sum(d < 0 for d in paired)} of 3"
    assert "Ablation of the plus recipe" in (tmp_path / "ablation.md").read_text()
    with pytest.raises(crossval.CVError, match="no section"):
        crossval.override(recipe, {"nonsense.x": 1})
    assert set(crossval.ABLATION) >= {"SpecAugment", "mixup", "speed perturbation", "label smoothing", "per-utterance normalisation",
                                      "test-time speed copies"}
    no_copies = crossval.override(recipe, crossval.ABLATION["test-time speed copies"])
    assert crossval.model_spec(no_copies, 64, 7).speeds == (1.0,) and crossval.model_spec(recipe, 64, 7).speeds == (0.95, 1.0, 1.05)


def test_an_inference_switch_rescores_the_trained_folds_instead_of_training_them_again(synth_logmel, tmp_path):
    """The ablation's "test-time speed copies" row changes how the network infers, not what
    it learns: its folds are the recipe's own weights scored again, not retrained."""
    from ser.study import models
    from ser.study.training import evaluate

    recipe = narrow(crossval.load_recipe("plus"), epochs=2)
    switches = {"test-time speed copies": crossval.ABLATION["test-time speed copies"], "mixup": {"augment.mixup": 0.0}}
    lines = []
    rows = crossval.ablation(lambda _: synth_logmel, recipe, tmp_path, folds=3, switches=switches, progress=False, log=lines.append)
    assert len(rows) == 3 and sum("rescored in" in line for line in lines) == 3  # three folds of the copies row, none of mixup's
    assert sum("not rescored, its recipe trains differently" in line for line in lines) == 3  # mixup's: trained
    outer = splits.speaker_folds(synth_logmel, 3, seed=0)
    for i, (_, test_idx) in enumerate(outer):
        base = json.loads((tmp_path / "variant-00" / f"fold-{i:02d}-seed-0" / "result.json").read_text())
        copies = json.loads((tmp_path / "variant-01" / f"fold-{i:02d}-seed-0" / "result.json").read_text())
        assert copies["history"] == base["history"] and copies["recipe_key"] != base["recipe_key"]
        bundle = models.load_bundle(tmp_path / "variant-01" / f"fold-{i:02d}-seed-0" / "model.pt")
        trained = models.load_bundle(tmp_path / "variant-00" / f"fold-{i:02d}-seed-0" / "model.pt")
        assert bundle.arch.speeds == (1.0,) and trained.arch.speeds == (0.95, 1.0, 1.05)
        assert all(torch.equal(a, b) for a, b in zip(bundle.model.state_dict().values(), trained.model.state_dict().values()))
        assert copies["ua"] == pytest.approx(evaluate(bundle.model, synth_logmel.subset(test_idx)).ua)
    again = crossval.run(synth_logmel, crossval.override(recipe, switches["test-time speed copies"]), tmp_path / "variant-01", folds=3,
                         progress=False, log=lines.append)
    assert all("done before" in line for line in lines[-3:]) and len(again.folds) == 3
    # other folds (two speaker groups, not three) share the folder names: only a fold with the same test speakers is rescored
    lines.clear()
    two = crossval.run(synth_logmel, crossval.override(recipe, switches["test-time speed copies"]), tmp_path / "two", folds=2,
                       progress=False, trained=tmp_path / "variant-00", log=lines.append)
    three = {f.fold: f.test_speakers for f in again.folds}
    assert [any("rescored in" in line for line in lines if f"fold {f.fold} " in line) for f in two.folds] == \
        [f.test_speakers == three[f.fold] for f in two.folds]
    assert any(f.test_speakers != three[f.fold] for f in two.folds)
    # a run made before training keys were recorded is still a source: its key comes from the recipe saved beside it
    old_fold = tmp_path / "variant-00" / "fold-00-seed-0" / "result.json"
    data = json.loads(old_fold.read_text())
    del data["training_key"]
    old_fold.write_text(json.dumps(data))
    lines.clear()
    crossval.run(synth_logmel, crossval.override(recipe, switches["test-time speed copies"]), tmp_path / "older", folds=3,
                 progress=False, trained=tmp_path / "variant-00", log=lines.append)
    assert sum("rescored in" in line for line in lines) == 3
    # a fold that cannot be a source says why before it trains
    lines.clear()
    crossval.run(synth_logmel, crossval.override(recipe, {"augment.mixup": 0.0}), tmp_path / "mixup", folds=3, progress=False,
                 trained=tmp_path / "variant-00", log=lines.append)
    assert sum("not rescored, its recipe trains differently" in line for line in lines) == 3
    with pytest.raises(crossval.CVError, match="not a folder"):
        crossval.run(synth_logmel, recipe, tmp_path / "x", folds=3, progress=False, trained=tmp_path / "nowhere")
    # under a rule that evaluates while training, the copies choose the epoch: no rescoring then
    chosen = recipe.with_(checkpoint="validation")
    assert chosen.key(training_only=True) != crossval.override(chosen, switches["test-time speed copies"]).key(training_only=True)
    assert recipe.key(training_only=True) == crossval.override(recipe, switches["test-time speed copies"]).key(training_only=True)


def test_the_recipe_key_survives_a_switch_added_at_its_off_value():
    """A finished fold is reused only under the same recipe key: a switch added to the
    code later (vtlp), left off, must not make every user's folds train again."""
    plus = crossval.load_recipe("plus")
    assert plus.key() == "77efdf2577ee"  # the plus recipe's key since 2026-12-05 (speed copies on); change it deliberately
    assert crossval.override(plus, {"augment.vtlp": 0.1}).key() != plus.key()


@pytest.fixture(scope="module")
def synth_table(tmp_path_factory):
    """The utterance table `ser ingest` writes for a synthetic corpus of three speakers."""
    from ser.cli import main

    root = tmp_path_factory.mktemp("cvtable")
    synthetic.generate(root / "corpus", "ravdess", per_class=6, speakers=3, seed=2, spread=0.5)
    assert main(["ingest", "--corpus", f"synthetic={root / 'corpus'}", "--out", str(root / "t.csv"), "--no-progress"]) == 0
    return root / "t.csv"


def test_ser_cv_from_a_table_with_overrides_is_one_tracked_run(synth_table, tmp_path, tracking_env, capsys):  # noqa: F811
    """`ser cv --table`: features extracted with the recipe's spec, --set and --epochs land in
    the recipe saved beside the results, and one MLflow run holds the scores and files."""
    from mlflow.tracking import MlflowClient

    from ser.cli import main

    out = tmp_path / "cv"
    args = ["cv", "--table", str(synth_table), "--recipe", "plus", "--folds", "3", "--epochs", "2", "--set", "augment.mixup=0",
            "--set", "model.pooling=attention", "--cache", str(tmp_path / "cache"), "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3-fold speaker groups, 3 runs: UA" in printed and "42 rows, 3 speakers" in printed
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["augment"]["mixup"] == 0 and saved["model"]["pooling"] == "attention" and saved["train"]["epochs"] == 2
    summary = json.loads((out / "summary.json").read_text())
    client = MlflowClient()
    experiment = client.get_experiment_by_name(tracking_env["MLFLOW_EXPERIMENT_NAME"])
    (run,) = client.search_runs([experiment.experiment_id], "tags.`ser.kind` = 'cv'")
    assert run.data.params["recipe"] == "plus" and run.data.params["protocol"] == "3 speaker groups"
    assert run.data.metrics["ua_mean"] == pytest.approx(summary["summary"]["ua"]["mean"])
    assert run.data.metrics["macro_f1_std"] == pytest.approx(summary["summary"]["macro_f1"]["std"])
    assert {"folds.md", "summary.json", "recipe.yaml", "confusion_matrix.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # the same folds without the speed copies (--trained): the weights above rescored, none trained again
    assert main(args[:-1] + [str(tmp_path / "cv-1x"), "--set", "model.speeds=[1]", "--trained", str(out)]) == 0
    assert capsys.readouterr().out.count("rescored in") == 3
    assert yaml.safe_load((tmp_path / "cv-1x" / "recipe.yaml").read_text())["model"]["speeds"] == [1]


def test_ser_cv_refuses_bad_requests_with_one_line(synth_table, tmp_path, capsys):
    from ser.cli import main

    base = ["cv", "--out", str(tmp_path / "cv"), "--tracking", "off", "--no-progress"]
    cases = [([], "exactly one of a table"),
             (["--table", str(synth_table), "--folds", "1"], "folds must be at least 2"),
             (["--table", str(synth_table), "--set", "augment.mixup"], "SECTION.FIELD=VALUE"),
             (["--table", str(synth_table), "--recipe", "nonesuch"], "neither"),
             (["--table", str(tmp_path / "none.csv")], "table not found")]
    for extra, reason in cases:
        assert main([*base, *extra]) == 2, extra
        assert reason in capsys.readouterr().err, extra
