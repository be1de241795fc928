"""The one place objectives and teachers are registered: by decorator, where each is defined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["OBJECTIVES", "TEACHERS", "register_objective", "register_teacher"]

OBJECTIVES: dict[str, type] = {}  # a recipe's `objective` -> its class (engine.Objective)
TEACHERS: dict[str, tuple[Callable[..., Any], str]] = {}  # teachers that are not distilldift models: (builder, licence)


def register_objective(name: str) -> Callable[[type], type]:
    """Class decorator: the objective a recipe names ``name``; its settings are the ``TrainConfig`` section of the
    same name (``distill``, ``co3d``, ``keypoints``)."""

    def add(cls: type) -> type:
        OBJECTIVES[name] = cls
        return cls

    return add


def register_teacher(name: str, licence: str) -> Callable[[Callable], Callable]:
    """Function decorator: ``builder(diffusion_settings, device) -> Teacher`` for the teacher ``name``; ``licence``:
    the note a model trained on it inherits."""

    def add(builder: Callable) -> Callable:
        TEACHERS[name] = (builder, licence)
        return builder

    return add
