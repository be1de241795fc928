"""``train``: the ``distilldift train`` entry point: a recipe's objective run by the training engine.

The engine (``engine.py``) owns processes, devices, precision, optimiser, schedule, checkpoints and the model
folder; the objective (``objectives.py``: ``distill.py``, the paper's multi-teacher distillation, and ``co3d.py``, its
3D fine-tuning, both section 3.2) owns the data, its one-off work and the loss.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import check_distinct
from .config import TrainConfig
from .engine import run_training
from .objectives import make_objective

__all__ = ["train"]


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
    ``"co3d"``: fine-tune on CO3D v2 below ``data`` with labels from its depth and cameras (``co3d-labels/``).

    ``out`` receives ``teacher-cache/``, ``checkpoint.pt`` (every ``checkpoint_every`` steps), ``log.jsonl``
    (one line per step: the total ``loss``, each unweighted term - ``distill``, the paper's similarity loss, and
    ``hint`` when ``hint_weight > 0`` - and ``lr``) and ``model/`` (the trained model, for ``load_model``).
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
    objective = make_objective(config)
    return run_training(config, objective, data, out, resume=resume, overwrite=overwrite, recipe=recipe, log=log)
