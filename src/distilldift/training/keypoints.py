"""The ``keypoints`` objective: supervised fine-tuning on annotated keypoint pairs (``--recipe spair``).

Pairs come from a benchmark reader (``datasets``; SPair-71k ``trn`` by default); each step draws ``batch_size`` pairs
and up to ``points_per_pair`` of their keypoints as a pure function of ``(seed, step)``. Both images are stretched
to the training size and the keypoints moved with them (exact pixel -> grid maps). The loss is either the
cross-entropy against a Gaussian at the true match (``losses.point_loss``, the default) or the authors' MSE on a
soft-argmax (``losses.soft_argmax_loss``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..datasets import PairDataset, read_dataset
from ..datasets.base import DatasetError
from ..models.model import DistillDiftModel
from .config import TrainConfig
from .data import labelled_pair, stack_pairs
from .engine import Objective, Run
from .losses import point_loss, soft_argmax_loss
from .registry import register_objective

__all__ = ["KeypointSupervision"]


@register_objective("keypoints")
class KeypointSupervision(Objective):
    """Supervised fine-tuning on the keypoint pairs of ``keypoints.dataset`` / ``keypoints.split`` below the data
    folder."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.data: PairDataset | None = None

    def check(self, run: Run) -> None:
        s = self.config.keypoints
        data = read_dataset(s.dataset, run.data, s.split)
        pairs = [p for p in data.pairs if len(p.source_points) > 0]
        if not pairs:
            raise DatasetError(f"{s.dataset} {s.split!r} below {str(run.data)!r} has no pair with keypoints")
        self.data = dataclasses.replace(data, pairs=pairs)

    def batch(self, run: Run, student: DistillDiftModel, step: int) -> dict[str, torch.Tensor]:
        c, s = self.config, self.config.keypoints
        rng = np.random.default_rng([c.seed, step])
        chosen = rng.integers(0, len(self.data.pairs), size=c.batch_size)
        picks = []
        for index in chosen:  # every rank draws the whole batch: the generators stay in step
            n = len(self.data.pairs[int(index)].source_points)
            picks.append(np.sort(rng.choice(n, min(n, s.points_per_pair), replace=False)))
        per_rank = c.batch_size // run.world
        items = []
        for i in range(run.rank * per_rank, (run.rank + 1) * per_rank):
            pair, pick = self.data.pairs[int(chosen[i])], picks[i]
            a = torch.as_tensor(np.asarray(pair.source_points)[pick])
            b = torch.as_tensor(np.asarray(pair.target_points)[pick])
            aug = np.random.default_rng([c.seed, step, i]) if s.augment else None
            items.append(
                labelled_pair(
                    student, pair.source, pair.target, a, b, size=c.image_size, slots=s.points_per_pair, rng=aug
                )
            )
        return stack_pairs(items)

    def terms(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        c, s = self.config, self.config.keypoints
        f = model(batch["images"])
        n = f.shape[0] // 2
        a, b, valid = batch["source_points"], batch["target_points"], batch["valid"]
        if s.loss == "soft_argmax":
            return {"soft_argmax": soft_argmax_loss(f[:n], f[n:], a, b, valid, s.beta)}
        return {"point": point_loss(f[:n], f[n:], a, b, valid, c.temperature, s.kernel, s.sigma)}

    def describe(self, recipe: str) -> tuple[str, str]:
        c, s = self.config, self.config.keypoints
        start = c.student_init if c.student_init not in ("pretrained", "random") else f"{c.student_init} {c.student}"
        description = (
            f"{start} fine-tuned on {s.dataset} {s.split} keypoints ({s.loss.replace('_', ' ')}) by distilldift train"
            + (f" --recipe {recipe}" if recipe else "")
            + f", {c.steps} steps at {c.image_size}x{c.image_size}"
        )
        return description, ""
