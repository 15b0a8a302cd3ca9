"""The public face: every name in every ``__all__`` resolves, and ``import safealign`` is cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import safealign

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "safealign",
    "safealign.data",
    "safealign.models",
    "safealign.privacy",
    "safealign.groups",
    "safealign.constraints",
    "safealign.audits",
    "safealign.run",
    "safealign.integrations",
    "safealign.cli",
]
LIGHT = [p for p in PACKAGES if p != "safealign.run"]  # run/__init__ imports its stages


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_resolves_to_its_definition(package):
    module = importlib.import_module(package)
    names = module.__all__
    assert len(names) == len(set(names)), "a name is listed twice"
    for name in names:
        value = getattr(module, name)
        assert name in dir(module)
        exports = getattr(module, "_EXPORTS", {})
        home = next((m for m, listed in exports.items() if name in listed), None)
        if home is not None:  # a lazy name is the very object its module defines
            defined = importlib.import_module(home)
            expected = defined if home == f"{package}.{name}" else getattr(defined, name)
            assert value is expected, f"{package}.{name}"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'train_everything'"):
        safealign.train_everything  # noqa: B018
    assert not hasattr(safealign.privacy, "no_such_name")


def test_a_subpackage_name_stays_the_subpackage():
    """``safealign.run`` is the run package whatever was imported first (its ``run`` is the
    recipe): a function of the same name would be replaced by the package on its import."""
    import safealign.run.recipe

    assert safealign.run is sys.modules["safealign.run"]
    assert safealign.run.run is safealign.run.recipe.run


def test_importing_safealign_and_building_the_cli_does_not_import_torch():
    probe = (
        "import sys, importlib\n"
        "import safealign\n"
        f"for p in {LIGHT!r}: importlib.import_module(p)\n"
        "from safealign.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'opacus', 'transformers', 'cvxpy') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
