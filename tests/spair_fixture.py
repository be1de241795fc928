"""An SPair-71k-format dataset made from real photos and known transforms (for the supervised training tests).

Each pair is a photo and a copy of it moved by a known similarity transform (scale, rotation, shift; black where
the copy leaves the photo) with a colour change; keypoints are points of the photo and their exact images under
the transform (pixel centres at integers, as distilldift reads SPair). Layout as SPair's:
``JPEGImages/<category>/<name>.jpg``, ``PairAnnotation/<split>/<id>.json``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _warp(img: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` -> the same size, ``out(q) = img(m^-1 q)`` for the 2x3 map ``m`` of pixel centres."""
    _, h, w = img.shape
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([(sx + 0.5) / w * 2 - 1, (sy + 0.5) / h * 2 - 1], -1).float()[None]
    return F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def write_spair_fixture(
    root: Path, photos: list[Path], split: str, *, pairs_per_photo: int = 1, points: int = 20, seed: int = 0
) -> int:
    """Write pairs of ``photos`` into ``root`` (SPair layout); return how many pairs."""
    rng = np.random.default_rng(seed)
    ann = root / "PairAnnotation" / split
    ann.mkdir(parents=True, exist_ok=True)
    n = len(list(ann.glob("*.json")))
    for photo in photos:
        category = re.sub(r"[^a-z0-9]+", "_", photo.parent.name.lower()).strip("_")
        folder = root / "JPEGImages" / category
        folder.mkdir(parents=True, exist_ok=True)
        img = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
        _, h, w = img.shape
        src_name = f"{photo.stem}.jpg"
        rgb = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(folder / src_name, quality=95)
        for k in range(pairs_per_photo):
            s, a = rng.uniform(0.75, 1.25), math.radians(rng.uniform(-20, 20))
            t = rng.uniform(-0.12, 0.12, 2) * np.array([w, h])
            c = np.array([(w - 1) / 2, (h - 1) / 2])
            r = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            m = np.hstack([r, (c + t - r @ c)[:, None]])  # q = r p + (c + t - r c)
            out = _warp(img, m)
            out = ((out - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)).clamp(0, 1)
            trg_name = f"{photo.stem}_{split}{k}.jpg"
            Image.fromarray((out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                folder / trg_name, quality=95
            )
            p = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], (points * 2, 2))
            q = p @ m[:, :2].T + m[:, 2]
            keep = (q[:, 0] >= 2) & (q[:, 0] <= w - 3) & (q[:, 1] >= 2) & (q[:, 1] <= h - 3)
            p, q = p[keep][:points], q[keep][:points]
            box = [float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())]
            record = {
                "category": category,
                "src_imname": src_name,
                "trg_imname": trg_name,
                "src_imsize": [w, h, 3],
                "trg_imsize": [w, h, 3],
                "src_kps": p.tolist(),
                "trg_kps": q.tolist(),
                "kps_ids": list(range(len(p))),
                "src_bndbox": [0, 0, w - 1, h - 1],
                "trg_bndbox": box,
            }
            (ann / f"{n:06d}.json").write_text(json.dumps(record))
            n += 1
    return n
