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


@pytest.fixture(autouse=True, scope="session")
def _isolated_safealign_home(tmp_path_factory):
    """Per-user state (default ledger, its key) in a temporary directory, never the real home.

    Session-scoped so that module-scoped fixtures (which run before function-scoped ones) are
    isolated too.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAFEALIGN_HOME", str(tmp_path_factory.mktemp("safealign-home")))
        yield
