"""A position-encoding "backbone" for exact coordinate tests.

Test images are linear colour ramps of a scene: red = u / SCENE_W, green = v / SCENE_H at scene point (u, v).
The oracle averages each stride x stride cell (a linear ramp's cell average is its value at the cell centre) and
encodes (red, green) with low-frequency Fourier features, so cosine similarity peaks exactly where the scene
positions agree. Any view of the scene (resized, cropped, mirrored, stretched) then has known correspondences.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distilldift import DistillDiftModel, Variant

SCENE_W, SCENE_H = 400.0, 300.0
FREQS = (1.0, 2.0, 2.8)  # radians per unit of red/green; all < pi so the peak is unique over [0, 1]


class OracleBackbone(nn.Module):
    def __init__(self, stride: int = 8, orientation: float = 0.0):
        super().__init__()
        self.stride = stride
        # weight of a channel saying which way red increases: mirrored views differ there, like real features do
        self.orientation = orientation
        self.feature_info = [{"reduction": stride, "num_chs": 4 * len(FREQS) + 1, "module": "oracle"}]
        self.dummy = nn.Parameter(torch.zeros(1))  # a parameter gives the model a device and dtype

    def forward_intermediates(self, x, indices=None, norm=False, intermediates_only=True, **_):
        rg = F.avg_pool2d(x[:, :2].double(), self.stride)
        parts = []
        for f in FREQS:
            parts += [torch.cos(f * rg), torch.sin(f * rg)]
        dx = F.pad(x[:, :1, :, 1:] - x[:, :1, :, :-1], (0, 1, 0, 0), mode="replicate").double()
        parts.append(self.orientation * torch.sign(F.avg_pool2d(dx, self.stride)))
        return [torch.cat(parts, 1).float() + 0 * self.dummy]


def oracle_model(
    resize: str = "stretch", input_size: int = 160, stride: int = 8, orientation: float = 0.0
) -> DistillDiftModel:
    variant = Variant(
        name=f"oracle_{resize}",
        arch="oracle",
        layers=(0,),
        final_norm=False,
        input_size=input_size,
        resize=resize,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    return DistillDiftModel(OracleBackbone(stride, orientation), variant).eval()


class View:
    """A W x H view of the scene: pixel (x, y) shows u = x0 + sx * x' (x' = W-1-x if flipped), v = y0 + sy * y."""

    def __init__(self, w: int, h: int, x0: float, y0: float, sx: float, sy: float, flip: bool = False):
        self.w, self.h, self.x0, self.y0, self.sx, self.sy, self.flip = w, h, x0, y0, sx, sy, flip

    def image(self) -> np.ndarray:
        x = np.arange(self.w, dtype=np.float64)
        y = np.arange(self.h, dtype=np.float64)
        u = self.x0 + self.sx * ((self.w - 1 - x) if self.flip else x)
        v = self.y0 + self.sy * y
        img = np.zeros((self.h, self.w, 3), dtype=np.float32)
        img[:, :, 0] = (u / SCENE_W)[None, :]
        img[:, :, 1] = (v / SCENE_H)[:, None]
        img[:, :, 2] = 0.5
        return img

    def to_scene(self, pts: np.ndarray) -> np.ndarray:
        x = (self.w - 1 - pts[:, 0]) if self.flip else pts[:, 0]
        return np.stack([self.x0 + self.sx * x, self.y0 + self.sy * pts[:, 1]], 1)

    def from_scene(self, uv: np.ndarray) -> np.ndarray:
        x = (uv[:, 0] - self.x0) / self.sx
        if self.flip:
            x = self.w - 1 - x
        return np.stack([x, (uv[:, 1] - self.y0) / self.sy], 1)


def transfer(a: View, b: View, pts: np.ndarray) -> np.ndarray:
    """True positions in view b of pixel points of view a."""
    return b.from_scene(a.to_scene(pts))


BASE = View(240, 180, 20.0, 15.0, 1.5, 1.5)
VIEWS = {
    "resized": View(300, 225, 20.0, 15.0, 1.2, 1.2),
    "cropped": View(150, 120, 80.0, 60.0, 1.5, 1.5),
    "flipped": View(240, 180, 20.0, 15.0, 1.5, 1.5, flip=True),
    "nonsquare": View(330, 120, 20.0, 15.0, 360 / 330, 270 / 120),
}
__all__ = ["BASE", "VIEWS", "View", "oracle_model", "transfer", "math"]
