"""Teachers behind one interface: images in, L2-normalised dense features on the student's grid out.

``ModelTeacher`` wraps any distilldift model (so any timm backbone: DINOv2-B/14 at 434 px, the offline
EfficientNet-Lite0, ...); ``EnsembleTeacher`` concatenates several teachers' per-location-normalised maps (the
paper's DINOv2 + SDXL-Turbo, 768 + 1280 channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..images import preprocess
from ..model import DistillDiftModel

__all__ = ["Teacher", "ModelTeacher", "EnsembleTeacher", "to_grid"]


def to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``(B, C, h, w)`` to ``grid = (gw, gh)`` (bilinear, cell centres aligned) and L2-normalise."""
    gw, gh = grid
    if features.shape[-2:] != (gh, gw):
        features = F.interpolate(features, size=(gh, gw), mode="bilinear", align_corners=False)
    return F.normalize(features.float(), dim=1)


class Teacher(nn.Module):
    """Interface: ``teacher(images, grid, categories)`` -> ``(B, C, gh, gw)`` unit-norm features.

    ``images``: ``(B, 3, H, W)`` in [0, 1], all one size; ``grid = (gw, gh)``: the student's feature grid for these
    images; ``categories``: one name per image (prompts of text-conditioned teachers) or ``None``.
    """

    name: str = "teacher"
    channels: int = 0

    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        raise NotImplementedError


class ModelTeacher(Teacher):
    """A distilldift model as a teacher, at its own input size (e.g. DINOv2-B/14 at 434 px)."""

    def __init__(self, model: DistillDiftModel, size: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size
        self.name = f"{model.variant.name}@{size or model.variant.input_size}"
        self.channels = model.feature_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        p = next(self.model.parameters())
        geom = self.model.geometry((images.shape[-1], images.shape[-2]), self.size)
        v = self.model.variant
        x = torch.stack([preprocess(im, geom.input_size, v.mean, v.std) for im in images.float()])
        return to_grid(self.model(x.to(p.device, p.dtype)), grid)


class EnsembleTeacher(Teacher):
    """Several teachers, each map normalised per location, concatenated along channels."""

    def __init__(self, teachers: Sequence[Teacher]):
        super().__init__()
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.name = "+".join(t.name for t in teachers)
        self.channels = sum(t.channels for t in teachers)

    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        return torch.cat([t(images, grid, categories) for t in self.teachers], dim=1)
