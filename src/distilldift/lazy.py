"""Names a package exports, imported on first use (so ``import distilldift`` and ``--help`` stay fast)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exporting ``exports`` (name -> submodule, relative).

    Example:
        >>> get, names = lazy_exports("distilldift", {"load_image": "images"})
        >>> get("load_image").__name__, "load_image" in names()
        ('load_image', True)
        >>> get("nothing")
        Traceback (most recent call last):
        ...
        AttributeError: module 'distilldift' has no attribute 'nothing'
    """

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def dir_() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return getattr_, dir_
