"""``train``: the ``distilldift train`` entry point: a recipe's objective run by the training engine.

The engine (``engine.py``) owns processes, devices, precision, optimiser, schedule, checkpoints and the model
folder; the objective (``distill.py``: the paper's multi-teacher distillation, section 3.2) owns the data, the
teachers and the loss.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import TrainConfig
from .distill import Distillation
from .engine import run_training

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
    """Distil the teachers of ``config`` into its student on the images below ``data``; write results to ``out``.

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
    objective = Distillation(config)
    return run_training(config, objective, data, out, resume=resume, overwrite=overwrite, recipe=recipe, log=log)
