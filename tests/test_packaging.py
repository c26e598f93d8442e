"""Packaging: every package the code imports is declared in pyproject.toml (an
undeclared one works only while some other dependency happens to pull it in)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"ser", "tests"}


def _imported_top_levels() -> dict[str, str]:
    """Top-level module -> one file that imports it, over src/ser (the Kubeflow components and pipelines included)."""
    found: dict[str, str] = {}
    for folder in ("src/ser",):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _names(deps: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-") for dep in deps}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return _names(project["dependencies"]) | _names(project["optional-dependencies"]["encoder"])


def _undeclared(declared: set[str]) -> dict[str, tuple[list[str], str]]:
    """Imported third-party modules whose distribution is not in ``declared``."""
    dists = packages_distributions()
    missing = {}
    for module, where in _imported_top_levels().items():
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
            continue
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        assert owners, f"{module} (imported in {where}) is not installed"
        if not owners & declared:
            missing[module] = (sorted(owners), where)
    return missing


def test_every_imported_package_is_declared():
    missing = _undeclared(_declared())
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_an_undeclared_import_is_reported():
    """psutil (imported by ser.ops.services) used to be missing from the list: the check names it."""
    assert set(_undeclared(_declared() - {"psutil"})) == {"psutil"}


def test_the_encoder_extra_stays_optional():
    """Only ser/data/encoder.py imports the encoder extra's packages, and only inside its
    functions: the core, the CNN images and `make demo` run without them."""
    extra = {"faster_whisper", "ctranslate2"}
    where = {}
    for path in (REPO / "src/ser").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(n.split(".")[0] in extra for n in names):
                where.setdefault(path.name, []).append(node in tree.body)
    assert set(where) == {"encoder.py"} and not any(where["encoder.py"])
