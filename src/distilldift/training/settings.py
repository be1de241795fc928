"""Settings records that check themselves: a recipe's sections are :class:`Section` dataclasses whose fields say
their bounds and choices (:func:`setting`); constructing one (directly, from a recipe file or with overrides)
validates every field, so a typo fails before any work."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import InvalidInputError

__all__ = ["Section", "setting"]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
    choices: tuple[str, ...] | Callable[[], Any] | None = None,
    check: Callable[[str, Any], None] | None = None,
) -> Any:
    """A field of a :class:`Section`: its default (or ``factory``), numeric bounds (``low`` inclusive, or strictly
    above it with ``above=True``; ``high`` inclusive), allowed ``choices`` (a tuple, or a function giving them) and
    any further ``check(key, value)``."""
    meta = dict(low=low, high=high, above=above, choices=choices, check=check)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Section:
    """Base of the settings sections. ``name`` is the section's key in a recipe (``""``: the top level).

    Example:
        >>> @dataclasses.dataclass
        ... class Demo(Section):
        ...     name: ClassVar[str] = "demo"
        ...     steps: int = setting(10, low=1)
        >>> Demo(steps=3).steps
        3
        >>> Demo(steps=0)
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: demo.steps must be >= 1, got 0
    """

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        defaults = type(self).defaults()
        for f in dataclasses.fields(self):
            key = f"{self.name}.{f.name}" if self.name else f.name
            value = _typed(key, defaults[f.name], getattr(self, f.name))
            _bounded(key, value, f.metadata)
            setattr(self, f.name, value)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each field's default value (the type a recipe's value must have)."""
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _typed(key: str, default: Any, value: Any) -> Any:
    """``value`` if it has the type of ``default`` (numbers converted: an int where a float is expected)."""
    if isinstance(default, Section):
        if not isinstance(value, type(default)):
            raise InvalidInputError(f"{key} must be a JSON object of its settings, e.g. {key}.<key>=value")
        return value
    if isinstance(default, list):
        whole = bool(default) and isinstance(default[0], int)
        ok = isinstance(value, list) and (
            (bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
            if whole
            else all(isinstance(v, str) for v in value)
        )
        if not ok:
            example = f"{key}={default}" if whole else f'{key}=["lite"]'
            kind = "whole numbers" if whole else "names"
            raise InvalidInputError(f"{key} must be a JSON list of {kind}, e.g. {example}, got {value!r}")
        return list(value)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise InvalidInputError(f"{key} must be a JSON object, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InvalidInputError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string, got {value!r}")
    if isinstance(default, (int, float)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidInputError(f"{key} must be a number, got {value!r}")
        if isinstance(default, int) and value != int(value):
            raise InvalidInputError(f"{key} must be a whole number, got {value!r}")
        return type(default)(value)
    return value


def _bounded(key: str, value: Any, meta) -> None:
    """Check ``value`` against a field's bounds, choices and own check."""
    low, high, above = meta.get("low"), meta.get("high"), meta.get("above", False)
    if low is not None and (not (value > low if above else value >= low) or (high is not None and value > high)):
        bound = (f"> {low:g}" if above else f">= {low:g}") + (f" and <= {high:g}" if high is not None else "")
        raise InvalidInputError(f"{key} must be {bound}, got {value!r}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = tuple(choices() if callable(choices) else choices)
        if value not in allowed:
            raise InvalidInputError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if meta.get("check") is not None:
        meta["check"](key, value)
