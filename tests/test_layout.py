"""The package's shape: every module imports, and dependencies point one way."""

import ast
import importlib
from pathlib import Path

import pytest

from safealign import errors

PACKAGE = Path(__file__).resolve().parents[1] / "safealign"
# data <- models <- privacy <- groups <- constraints <- audits <- run <- cli (STYLE.md).
LAYERS = {
    "data": 1,
    "models": 2,
    "privacy": 3,
    "groups": 4,
    "constraints": 5,
    "audits": 6,
    "run": 7,
    "cli": 8,
    "__main__": 9,
}
BASE = {"errors", "config", "_typed", "_atomic", "__init__"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    top = parts[1]
    return 0 if top in BASE else LAYERS[top]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


@pytest.mark.parametrize("module", [m for m, _ in _modules() if not m.endswith("__main__")])
def test_every_module_imports(module):
    importlib.import_module(module)


def test_dependencies_point_one_way():
    wrong = []
    for module, path in _modules():
        for imported in _imports(path):
            if imported.startswith("safealign.") and _layer(imported) > _layer(module):
                wrong.append(f"{module} imports {imported}")
    assert not wrong


def test_only_privacy_imports_opacus_and_only_audits_signs():
    wrong = []
    for module, path in _modules():
        for imported in _imports(path):
            if imported.split(".")[0] == "opacus" and ".privacy" not in module:
                wrong.append(f"{module} imports opacus")
            if imported.startswith("cryptography") and ".audits" not in module:
                wrong.append(f"{module} imports cryptography")
    assert not wrong


def test_errors_inherit_matching_builtins():
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.DataError, ValueError)
    assert issubclass(errors.PrivacyError, RuntimeError)
    assert issubclass(errors.BudgetExceededError, errors.PrivacyError)
    for cls in (
        errors.ConfigError,
        errors.DataError,
        errors.PrivacyError,
        errors.InfeasibleError,
        errors.IsolationError,
        errors.SignatureError,
    ):
        assert issubclass(cls, errors.SafeAlignError)
    err = errors.DataError("field 'chosen' is missing", path="p.jsonl", line=3, field="chosen")
    assert str(err) == "p.jsonl:3: field 'chosen' is missing"
    assert (err.path, err.line, err.field) == ("p.jsonl", 3, "chosen")
