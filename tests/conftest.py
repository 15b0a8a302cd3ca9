"""Shared fixtures: paths to ../shared/data (tests skip with a reason when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(
            f"real data not available: {path} is absent (needs ../shared/data beside the checkout)"
        )
    return path


def pytest_configure(config):
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine two threads
    # per process spin-wait against each other (measured: up to 10x slower). One thread keeps the
    # suite's time predictable.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_safealign_home(tmp_path_factory):
    """Point the per-user data directory (ledger, its key, demo keys) at a temp dir for the session.

    Session-scoped so that module-scoped fixtures (a demo run) are isolated too: a function-scoped
    monkeypatch would be applied only after they had already run.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAFEALIGN_HOME", str(tmp_path_factory.mktemp("safealign-home")))
        yield


@pytest.fixture(autouse=True)
def _per_test_safealign_home(tmp_path, monkeypatch):
    """Every test's own per-user state (default ledger, its key, demo keys) lives in its tmp_path,
    so no test sees a budget another test spent (module fixtures keep the session's home)."""
    monkeypatch.setenv("SAFEALIGN_HOME", str(tmp_path / "safealign-home"))
