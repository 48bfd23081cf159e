"""A package's names loaded on first use (PEP 562 module ``__getattr__``).

packft's package ``__init__`` files name what they offer without importing it: ``import
packft.ckpt`` must not load torch, and the CLI's argument parsing must not pay for pyarrow,
pydantic or the journaled writer. Each such package maps a name to the module that defines it
and sets ``__getattr__ = lazy_getattr(__name__, that_map)``; Python calls it only for a name the
package does not have yet, which then imports the module and returns the name from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``homes`` maps each name to the submodule that
    defines it (relative to ``package``); any other name is an ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        module = homes.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
