"""Lazy public names for a package (PEP 562): ``__getattr__``, ``__dir__`` and ``__all__``.

A package lists its public names by the module that defines them; a name is imported only when
first used (then kept in the package's namespace), so ``import safealign`` does not import torch
and ``safealign --help`` stays fast. A name equal to a subpackage's own name (``run`` in
``{"safealign.run": ("run", ...)}``) is the subpackage itself: Python binds a subpackage's name
in its parent on import anyway, so an attribute of the same name could not stay visible.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose ``exports`` map each defining
    module to the public names it provides.

    Raises:
        ValueError: a name is listed under two modules.
    """
    home: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in home:
                raise ValueError(f"{package}: {name!r} is exported by {home[name]} and {module}")
            home[name] = module

    def __getattr__(name: str) -> object:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module)
        value = loaded if module == f"{package}.{name}" else getattr(loaded, name)
        setattr(sys.modules[package], name, value)  # the next lookup skips __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__, list(home)
