"""`ser search`: options, the demo recipe end to end on a synthetic feature file,
resume, stage-by-stage runs and the errors a user can fix."""

from __future__ import annotations

import json

import pytest

from ser import cli
from ser.study import ranking, recipes, search, training
from tests.test_search import make_features


@pytest.fixture
def features(tmp_path):
    return make_features().save(tmp_path / "mel30.npz")


def tiny_recipe_file(tmp_path):
    """The demo recipe at 2% width (the CLI takes recipe files as well as names)."""
    text = recipes.recipe_text("demo").replace("scale: 0.05", "scale: 0.02")
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def count_fits(monkeypatch):
    calls = []
    real = training.fit

    def wrapper(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(training, "fit", wrapper)
    return calls


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["search", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--features", "--stage", "--recipe", "--trials", "--folds", "--epochs", "--previous", "--workdir", "--out",
                   "--split", "--seed", "--device", "--test-size", "--show-recipe"):
        assert option in text
    assert "TRAINING side" in text and "winner.json" in text


def test_show_recipe_prints_the_shipped_yaml(capsys):
    assert cli.main(["search", "--recipe", "study", "--show-recipe"]) == 0
    out = capsys.readouterr().out
    assert "conv_channels: {start: 100, stop: 420, step: 16}" in out and "stages:" in out
    assert cli.main(["search", "--recipe", "demo", "--trials", "3", "--show-recipe"]) == 0
    assert "vectors: 3" in capsys.readouterr().out


def test_demo_search_all_stages_then_resume(monkeypatch, tmp_path, features, capsys):
    calls = count_fits(monkeypatch)
    out = tmp_path / "out"
    args = ["search", "--features", str(features), "--recipe", str(tiny_recipe_file(tmp_path)), "--trials", "1", "--epochs", "2",
            "--out", str(out), "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "winner:" in text and "random 80/20, seed 0" in text and str(out / "winner.json") in text
    assert len(calls) == 6 * 2  # 1 + 1 + 2 + 2 vectors, 2 folds
    winner = json.loads((out / "winner.json").read_text())
    assert search.models.ArchSpec.from_dict(winner["arch"]).in_size == 30 and set(winner["train"]) == {"batch_size", "lr"}
    meta = json.loads((out / "search.json").read_text())
    assert meta["split"]["protocol"] == "random" and meta["split"]["seed"] == 0 and meta["split"]["test_size"] == 0.2
    rows = ranking.load_ranking(out / "ranking.csv")
    assert rows[0]["id"] == json.loads((out / "winner_meta.json").read_text())["vector"]["id"]

    calls.clear()
    assert cli.main(args) == 0
    assert calls == []  # every (vector, fold) came from the workdir

    # one stage on its own starts from the previous stage's ranking in OUT
    assert cli.main(args + ["--stage", "4"]) == 0
    assert calls == [] and "starting from" in capsys.readouterr().out


def test_errors_a_user_can_fix(monkeypatch, tmp_path, features, capsys):
    out = tmp_path / "out"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["search", "--features", str(features), "--recipe", "demo", "--mlflow", "--out", str(out)]) == 2
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert cli.main(["search", "--features", str(tmp_path / "nope.npz"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["search", "--features", str(features), "--recipe", "demo", "--stage", "3", "--out", str(out)]) == 2
    assert "--previous" in capsys.readouterr().err
    assert cli.main(["search", "--features", str(features), "--features", str(features), "--recipe", "demo", "--out", str(out)]) == 2
    assert "one file per kind and size" in capsys.readouterr().err
    assert cli.main(["search", "--recipe", str(tmp_path / "none.yaml"), "--features", str(features), "--out", str(out)]) == 2
    assert "recipe" in capsys.readouterr().err
    assert cli.main(["search", "--features", str(features), "--recipe", "demo", "--folds", "1", "--out", str(out)]) == 2
    assert "folds" in capsys.readouterr().err


def test_a_ranking_from_another_split_is_refused(tmp_path, features, capsys):
    out = tmp_path / "out"
    base = ["search", "--features", str(features), "--recipe", str(tiny_recipe_file(tmp_path)), "--trials", "1", "--epochs", "1",
            "--out", str(out), "--device", "cpu", "--no-progress"]
    assert cli.main(base + ["--stage", "1"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--stage", "2", "--seed", "1"]) == 2
    assert "another split" in capsys.readouterr().err
