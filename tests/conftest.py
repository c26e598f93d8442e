"""Shared fixtures: where ../shared lives, skips that say why, one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the checkout (CI lays it there), or SER_SHARED_DIR."""
    return Path(os.environ.get("SER_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def tess_dir() -> Path:
    path = shared_dir() / "data" / "tess"
    if not path.is_dir():
        pytest.skip(f"real TESS corpus not found at {path} (../shared absent): integration test skipped")
    return path


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    path = shared_dir() / "data" / "emodb"
    if not path.is_dir():
        pytest.skip(f"real EmoDB copy not found at {path} (../shared absent): integration test skipped")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that asks for real corpus audio (``tess_dir``, ``emodb_dir``) reads ../shared: mark
    it ``shared`` here, once, so that ``make test-fast`` (-m "not shared") is fast and
    no test file can forget the mark."""
    for item in items:
        if {"tess_dir", "emodb_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """Tiny networks on a shared 2-core machine: one torch thread is several times
    faster than two and immune to a busy machine. Set once, for every test."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_server_registry(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Servers the tests start are recorded in a registry of this session
    (ser.ops.services.registry_dir), never in the user's: `ser services down` in a test
    must not stop a developer's own servers, nor theirs the tests'."""
    os.environ["SER_STATE_DIR"] = str(tmp_path_factory.mktemp("ser-state"))
