"""The objectives a recipe can name (``objective`` in a recipe): name -> :class:`engine.Objective` class."""

from __future__ import annotations

from .co3d import Co3dFineTuning
from .config import TrainConfig
from .distill import Distillation
from .engine import Objective
from .keypoints import KeypointSupervision

__all__ = ["OBJECTIVE_CLASSES", "make_objective"]

OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    "distill": Distillation,
    "co3d": Co3dFineTuning,
    "keypoints": KeypointSupervision,
}


def make_objective(config: TrainConfig) -> Objective:
    """The objective ``config.objective`` names, set up with ``config``."""
    return OBJECTIVE_CLASSES[config.objective](config)
