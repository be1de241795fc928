"""Training images: every image of a folder, each as ``copies`` deterministic augmented versions.

An entry is identified as ``"<path>#<copy>"``; the same entry always gives the same pixels, so the teacher cache
and the student see identical inputs and a resumed run sees the same data.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..images import IMAGE_SUFFIXES, load_image

__all__ = ["TrainImages", "find_images"]


def find_images(root: str | Path) -> list[Path]:
    """All images below ``root`` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"training data folder not found: {str(root)!r}")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(found) < 2:
        raise InvalidInputError(f"{str(root)!r} holds {len(found)} images; distillation needs image pairs (2+)")
    return found


class TrainImages:
    """``len(base) * copies`` entries; entry ``e`` is copy ``e % copies`` of image ``e // copies``."""

    def __init__(self, root: str | Path, *, size: int, copies: int = 1, augment: bool = False, seed: int = 0):
        self.root = Path(root).resolve()  # one spelling per folder: a resumed run finds its teacher cache
        self.base = find_images(self.root)
        self.size, self.copies, self.augment, self.seed = size, max(1, copies), augment, seed
        cats_file = self.root / "categories.json"  # optional: {"relative/path.jpg": "category", ...}
        cats = json.loads(cats_file.read_text(encoding="utf-8")) if cats_file.exists() else {}
        self.categories = [cats.get(p.relative_to(self.root).as_posix(), p.parent.name) for p in self.base]

    def __len__(self) -> int:
        return len(self.base) * self.copies

    def ids(self) -> list[str]:
        return [f"{self.base[e // self.copies]}#{e % self.copies}" for e in range(len(self))]

    def load(self, entry: int) -> torch.Tensor:
        """``(3, size, size)`` float image of entry ``entry``."""
        return self._make(self.base[entry // self.copies], entry % self.copies)

    def load_original(self, path: Path) -> torch.Tensor:
        """``(3, size, size)`` float image of ``path`` without augmentation (copy 0)."""
        return self._make(Path(path), 0)

    def load_id(self, ident: str) -> torch.Tensor:
        path, _, copy = ident.rpartition("#")
        return self._make(Path(path), int(copy))

    def _make(self, path: Path, copy: int) -> torch.Tensor:
        img = load_image(path)
        if self.augment and copy > 0:
            name = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode()), copy])  # same copies in any folder
            img = _augment(img, rng)
        return F.interpolate(img[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]


def _augment(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random crop (50-100 % of the area), horizontal flip, brightness / contrast / saturation jitter."""
    _, h, w = img.shape
    scale, ratio = rng.uniform(0.5, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(scale * w * h * ratio))))
    ch = int(min(h, round(np.sqrt(scale * w * h / ratio))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img[:, y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        img = img.flip(-1)
    b, c, s = rng.uniform(0.8, 1.2, size=3)
    gray = img.mean(0, keepdim=True)
    img = (img * b - img.mean() * b) * c + img.mean() * b
    img = gray + (img - gray) * s
    return img.clamp(0, 1)
