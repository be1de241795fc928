"""Real-texture tracking clips with exact ground truth, in TAP-Vid's per-video layout.

A real photo seen by a camera that pans, zooms in and rotates (a known affine map per frame), crossed by an
occluder (a patch of another real photo) that enters and leaves the frame. Ground truth follows from the maps:
a point is occluded where the occluder covers it or where it leaves the frame. Layout of each clip, as in
TAP-Vid's pickles: ``video`` uint8 (T, H, W, 3), ``points`` float32 (N, T, 2) as (x, y) normalised to [0, 1],
``occluded`` bool (N, T); the queries are the points on frame 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIZE = 256


def _affine(t: float, seed: int) -> np.ndarray:
    """2x3 map from output pixels to source pixels at time ``t`` in [0, 1] (output centre -> source centre)."""
    rng = np.random.default_rng(seed)
    pan = rng.uniform(-1, 1, 2) * 45 * t
    zoom = 1.0 + 0.3 * t * rng.choice([-1, 1])
    angle = 0.2 * t * rng.choice([-1, 1])
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    return np.array([[c, -s, pan[0]], [s, c, pan[1]]])  # source offset from its centre = A @ (p - centre, 1)


def _render(photo: torch.Tensor, a: np.ndarray) -> torch.Tensor:
    """The ``SIZE`` x ``SIZE`` view of ``photo`` (3, H, W) through the affine ``a`` (pixel centres at integers)."""
    _, h, w = photo.shape
    coords = torch.arange(SIZE, dtype=torch.float64) - (SIZE - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    sx = a[0, 0] * xx + a[0, 1] * yy + a[0, 2] + (w - 1) / 2
    sy = a[1, 0] * xx + a[1, 1] * yy + a[1, 2] + (h - 1) / 2
    grid = torch.stack([(sx + 0.5) / w * 2 - 1, (sy + 0.5) / h * 2 - 1], -1).float()[None]
    return F.grid_sample(photo[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def _to_output(a: np.ndarray, src: np.ndarray, photo_size: tuple[int, int]) -> np.ndarray:
    """Source pixels (N, 2) -> output pixels of the view through ``a``."""
    w, h = photo_size
    off = src - np.array([(w - 1) / 2, (h - 1) / 2]) - a[:, 2]
    return off @ np.linalg.inv(a[:, :2]).T + (SIZE - 1) / 2


def make_clip(photo_path: Path, occluder_path: Path, *, frames: int = 24, points: int = 40, seed: int = 0) -> dict:
    """One clip as a TAP-Vid entry (see the module docstring)."""
    photo = torch.from_numpy(np.asarray(Image.open(photo_path).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    occ = torch.from_numpy(np.asarray(Image.open(occluder_path).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    size = (photo.shape[2], photo.shape[1])
    rng = np.random.default_rng(seed)
    maps = [_affine(t / (frames - 1), seed) for t in range(frames)]
    # queries: frame 0 pixels away from the border, mapped to the source photo
    q0 = rng.uniform(24, SIZE - 24, (points, 2))
    a0 = maps[0]
    src = (q0 - (SIZE - 1) / 2) @ a0[:, :2].T + a0[:, 2] + np.array([(size[0] - 1) / 2, (size[1] - 1) / 2])
    # the occluder: a square patch that crosses the frame between 20% and 80% of the clip
    side = int(rng.integers(70, 100))
    patch = F.interpolate(occ[None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
    y_occ = int(rng.integers(40, SIZE - 40 - side))
    start, stop = int(0.2 * frames), int(0.8 * frames)
    video, tracks, occluded = [], [], []
    for t, a in enumerate(maps):
        img = _render(photo, a)
        pts = _to_output(a, src, size)
        hidden = (pts < -0.5).any(1) | (pts > SIZE - 0.5).any(1)
        if start <= t < stop:
            x_occ = int(round(-side + (SIZE + side) * (t - start + 1) / (stop - start + 1)))
            x0, x1 = max(0, x_occ), min(SIZE, x_occ + side)
            if x1 > x0:
                img[:, y_occ : y_occ + side, x0:x1] = patch[:, :, x0 - x_occ : x1 - x_occ]
            inside = (pts[:, 0] >= x0 - 0.5) & (pts[:, 0] < x1 - 0.5) & (pts[:, 1] >= y_occ - 0.5)
            hidden |= inside & (pts[:, 1] < y_occ + side - 0.5)
        video.append((img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        tracks.append(pts)
        occluded.append(hidden)
    points_xy = np.stack(tracks, 1)  # (N, T, 2) pixels
    return {
        "video": np.stack(video),
        "points": ((points_xy + 0.5) / SIZE).astype(np.float32),  # TAP-Vid: normalised so that 0 and 1 are edges
        "occluded": np.stack(occluded, 1),
    }


def make_set(photo_root: Path, clips: int = 8, first: int = 0, **kw) -> dict[str, dict]:
    """``clips`` clips from PF-WILLOW's photos (one class per clip, the occluder from another class).

    Clip ``i`` uses seed ``i`` and photos ``i // 10`` (occluder ``i // 10 + 1``) of its class: ``first=40`` gives a
    development set (photos 4 and 5, other motions) disjoint from the default set (photos 0 and 1).
    """
    classes = sorted(p for p in Path(photo_root).iterdir() if p.is_dir())
    out = {}
    for i in range(first, first + clips):
        cls, other = classes[i % len(classes)], classes[(i + 3) % len(classes)]
        photo = sorted(cls.glob("*.png"))[i // len(classes)]
        occluder = sorted(other.glob("*.png"))[1 + i // len(classes)]
        out[f"{cls.name}-{photo.stem}"] = make_clip(photo, occluder, seed=i, **kw)
    return out
