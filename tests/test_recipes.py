"""Recipes: the search as data, and errors that say what is wrong with one."""

from __future__ import annotations

import pytest

from ser import recipes, search_space


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
