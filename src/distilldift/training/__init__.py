"""Training (the paper's section 3.2): a recipe (``config``: :class:`TrainConfig`, its sections checking
themselves) names an objective - registered by decorator (``registry``): ``distill`` (the multi-teacher
distillation: teachers, their feature cache, pairs, losses, hints), ``co3d`` (3D fine-tuning, ``multiview``) or
``keypoints`` (supervised) - which the engine (``engine``: processes, devices, precision, optimiser, schedule,
checkpoints, the model folder) runs without knowing the task.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError
from ..files import check_distinct

# isort: off
# each objective registers itself on import (registry.OBJECTIVES)
from . import distill, keypoints, multiview  # noqa: F401

# isort: on
from .config import TrainConfig, objective_names
from .engine import run_training
from .registry import OBJECTIVES

__all__ = ["train", "TrainConfig"]


def train(
    config: TrainConfig,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    recipe: str = "",
    log=print,
) -> Path:
    """Train ``config``'s student on ``data`` with its objective; write results to ``out``.

    ``objective="distill"`` (default): distil the teachers into the student on the images below ``data``;
    ``"co3d"``: fine-tune on CO3D v2 below ``data`` with labels from its depth and cameras (``co3d-labels/``);
    ``"keypoints"``: supervised fine-tuning on a benchmark's annotated pairs (SPair-71k ``trn``).

    ``out`` receives ``teacher-cache/``, ``checkpoint.pt`` (every ``checkpoint_every`` steps), ``log.jsonl``
    (one line per step: the total ``loss``, each unweighted term - ``distill``, the paper's similarity loss, and
    ``hint`` when ``distill.hint_weight > 0``; ``point`` for co3d / keypoints - and ``lr``) and ``model/`` (the
    trained model, for ``load_model``).
    With ``resume=True`` training continues from ``checkpoint.pt`` (``log.jsonl`` is cut back to its step); the
    checkpoint is checked before any cache work, and ``steps`` may be larger than the run's (extending it: the
    schedule is per step, so an extended run equals one started with the larger ``steps``). An ``out`` that holds
    a run is refused unless ``resume`` or ``overwrite`` (which deletes the run's checkpoint, log and model).
    ``recipe`` (its name) is recorded in the model folder's description.
    Under ``torchrun`` every process takes its share of each step's pairs and gradients are averaged (torch DDP),
    which equals one process taking them all.

    Returns:
        The ``model/`` folder.
    """
    check_distinct([("out", out)], [("data", data)])
    if config.objective not in OBJECTIVES:  # a section without a registered objective (an extension half-done)
        raise InvalidInputError(
            f"objective {config.objective!r} has settings but no registered objective; registered: "
            f"{', '.join(sorted(OBJECTIVES))} (of {', '.join(objective_names())})"
        )
    objective = OBJECTIVES[config.objective](config)
    return run_training(config, objective, data, out, resume=resume, overwrite=overwrite, recipe=recipe, log=log)
