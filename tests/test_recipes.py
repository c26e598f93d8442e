"""Recipes: the search as data, and errors that say what is wrong with one."""

from __future__ import annotations

import pytest

from ser.study import recipes, search_space, stopping


def test_recipe_errors_are_explained(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nstages: {1: {kind: random, vectorz: 3}}\n")
    with pytest.raises(search_space.SearchError, match="vectorz"):
        recipes.load_recipe(bad)
    bad.write_text("name: x\nspace: {conv_channels: {start: 1}}\nstages: {1: {kind: random}}\n")
    with pytest.raises(search_space.SearchError, match="start, stop and step"):
        recipes.load_recipe(bad)
    with pytest.raises(search_space.SearchError, match="does not exist"):
        recipes.load_recipe(tmp_path / "nope.yaml")


def test_stage1_moves_rule_c_up_as_the_stage_goes_on():
    """The study's stage 1 began with C1 and moved up; stage 2 used C3 throughout."""
    study = recipes.load_recipe("study")
    s1, s2 = study.stage(1), study.stage(2)
    n = 430  # stage 1's vectors: 36 x 10 + 2 x 15 + 4 x 10
    used = [s1.rules_at(i, n).c_id for i in range(n)]
    assert used[0] == "C1" and used[-1] == "C3" and used == sorted(used)  # never moves back down
    assert [used.count(c) for c in ("C1", "C2", "C3")] == [144, 143, 143]
    assert s1.rules_at(200, n).c == stopping.C_RULES["C2"] and s1.rules_at(200, n).a == s1.rules.a  # only C changes
    assert {s2.rules_at(i, 60).c_id for i in range(60)} == {"C3"}
    again = recipes.StageConfig.from_dict(1, s1.to_dict())
    assert again.c_schedule == s1.c_schedule


@pytest.mark.parametrize("schedule", [[[0.5, "C1"]], [[0.0, "C4"]], [[0.0, "C2"], [0.0, "C1"], [1.2, "C3"]], ["C1"]])
def test_bad_c_schedule_is_refused(schedule):
    with pytest.raises(recipes.SearchError, match="c_schedule"):
        recipes.StageConfig.from_dict(1, {"kind": "random", "c_schedule": schedule})
