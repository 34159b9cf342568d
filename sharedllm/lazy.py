"""Lazy package exports (PEP 562): a package lists its public names and the module defining each, and a name's
module is imported on first access, so that importing the package, or one light submodule of it, loads no torch."""

import importlib


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """`(__getattr__, __dir__)` for `package`, whose public name -> defining module is `exports` (an absolute name,
    or relative like ".cli"); a name once loaded is kept in the package's `namespace` (its globals())."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
