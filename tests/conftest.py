"""Shared fixtures: paths to ../shared/data (tests skip with a reason when it is absent)."""

from __future__ import annotations

import hashlib
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


class _RepeatableSecretBytes:
    """Stand-in for ``safealign.privacy.secret._secret_material`` in the tests only.

    A run's DP sampling and noise are secret (OS CSPRNG bytes), so a statistical test on a DP
    model would see new draws on every run and could flake. Here the N-th draw since the last
    reset is ``sha256("safealign-test-N")``: each generator is still distinct, and a test (or a
    module's or the session's fixture) sees the same draws on every run whatever ran before,
    because the counter restarts at each test and at each fixture wider than a test (below). No config
    key can do this; only a test can. Tests of the secrecy itself take ``secret_randomness``.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        return hashlib.sha256(b"safealign-test-%d" % (self.count - 1)).digest()


_SECRET_BYTES = _RepeatableSecretBytes()


@pytest.fixture(scope="session", autouse=True)
def _repeatable_dp_randomness_session():
    from safealign.privacy import secret

    _SECRET_BYTES.csprng = secret._secret_material  # the real source, for secret_randomness
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(secret, "_secret_material", _SECRET_BYTES)
        _SECRET_BYTES.count = 0
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.scope != "function":  # a module's or session's fixture: its own stream
        _SECRET_BYTES.count = 0
    yield


@pytest.fixture(autouse=True)
def _repeatable_dp_randomness(request, monkeypatch):
    _SECRET_BYTES.count = 0
    if "secret_randomness" in request.fixturenames:
        from safealign.privacy import secret

        monkeypatch.setattr(secret, "_secret_material", _SECRET_BYTES.csprng)


@pytest.fixture
def secret_randomness():
    """Request this to train with the real secret randomness (see ``_RepeatableSecretBytes``)."""
