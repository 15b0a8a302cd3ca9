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


@pytest.fixture(autouse=True)
def _repeatable_dp_randomness(request, monkeypatch):
    """Make DP randomness repeatable within the tests only.

    A run's DP sampling and noise are secret (``safealign.privacy.secret``: OS CSPRNG bytes), so
    a statistical test on a DP model would see new draws on every run and could flake. Here the
    secret bytes come from a per-test counter instead: each generator is still distinct, and every
    run of the suite sees the same ones. No config key can do this; only a test can. Tests of the
    secrecy itself take the ``secret_randomness`` fixture and keep the real CSPRNG.
    """
    if "secret_randomness" in request.fixturenames:
        return
    import hashlib
    import itertools

    from safealign.privacy import secret

    counter = itertools.count()
    monkeypatch.setattr(
        secret,
        "_secret_material",
        lambda: hashlib.sha256(b"safealign-test-%d" % next(counter)).digest(),
    )


@pytest.fixture
def secret_randomness():
    """Request this to train with the real secret randomness (see ``_repeatable_dp_randomness``)."""
