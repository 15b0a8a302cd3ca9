"""The package's shape: every module imports, dependencies point one way, and no import cycle.

Imports are read from the source (``ast.walk``), so every import counts wherever it is written:
at the top, inside a function, under ``if TYPE_CHECKING:``, an ``importlib.import_module("...")``
with a literal name, and the names a package's ``__init__`` resolves lazily (``_EXPORTS``).
"""

from __future__ import annotations

import ast
import graphlib
import importlib
from pathlib import Path

import pytest

from safealign import errors

PACKAGE = Path(__file__).resolve().parents[1] / "safealign"

# Bottom to top (STYLE.md): a module may import from its own layer or any layer above it in this
# list, never from one below. Every top-level module or package of safealign/ must be listed: a
# new one fails test_every_top_level_module_has_a_layer until it is given its place here.
LAYER_ORDER = [
    ("errors", "_version", "_lazy", "_atomic", "_typed"),
    ("config",),
    ("data",),
    ("models",),
    ("privacy",),
    ("groups",),
    ("constraints",),
    ("audits",),
    ("run",),
    ("integrations",),  # other libraries' interfaces (TRL) over models and run directories
    ("__init__",),  # the public face (safealign/__init__.py): over the library, under the CLI
    ("cli",),
    ("__main__",),
]
LAYERS = {top: layer for layer, tops in enumerate(LAYER_ORDER) for top in tops}


def _modules() -> dict[str, Path]:
    """Every module of safealign, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        modules[".".join(rel.parts).removesuffix(".__init__")] = path
    return modules


MODULES = _modules()


def _top(module: str) -> str:
    """``data`` for ``safealign.data.io``; ``__init__`` for the package ``safealign`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _target(name: str) -> str | None:
    """The safealign module that importing ``name`` loads (the longest existing prefix)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _imported_names(module: str, path: Path):
    """Dotted names ``module`` imports, wherever in the file the import is written."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from safealign.privacy import training`` imports the submodule (_target keeps
            # ``base`` itself for a name that is not one).
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield node.args[0].value
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            yield from ast.literal_eval(node.value)  # {module: names} of a lazy __init__


def _graph() -> dict[str, set[str]]:
    """Module -> the safealign modules it imports (an import of a submodule does not count as
    one of its package's ``__init__``, which Python runs first but which imports nothing back)."""
    graph = {}
    for module, path in MODULES.items():
        targets = {_target(n) for n in _imported_names(module, path) if n.startswith("safealign")}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


GRAPH = _graph()


@pytest.mark.parametrize("module", [m for m in MODULES if not m.endswith("__main__")])
def test_every_module_imports(module):
    importlib.import_module(module)


def test_every_top_level_module_has_a_layer():
    missing = sorted({_top(m) for m in MODULES} - set(LAYERS))
    assert not missing, f"give these a place in LAYER_ORDER: {missing}"


def test_dependencies_point_one_way():
    wrong = [
        f"{module} (layer {_top(module)}) imports {imported} (layer {_top(imported)})"
        for module, imports in GRAPH.items()
        for imported in sorted(imports)
        if LAYERS[_top(imported)] > LAYERS[_top(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checks_see_local_and_type_checking_imports(tmp_path):
    """What the two checks above rely on: imports inside functions, under TYPE_CHECKING and
    through lazy ``_EXPORTS`` are read, and one that closes a loop is a cycle."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from safealign.data import records\n"
        "def f():\n    from safealign.config import load_config\n"
        "_EXPORTS = {'safealign.models.scalar': ('ScoringModel',)}\n"
    )
    found = {_target(n) for n in _imported_names("safealign.errors", probe)} - {None}
    assert found == {"safealign.data.records", "safealign.config", "safealign.models.scalar"}
    graph = {m: set(imports) for m, imports in GRAPH.items()}
    graph["safealign.errors"] |= {"safealign.config"}  # config imports errors
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()


def test_only_privacy_imports_opacus_and_only_audits_signs():
    wrong = []
    for module, path in MODULES.items():
        for imported in _imported_names(module, path):
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
