"""Training images: every image of a folder, each as ``copies`` deterministic augmented versions.

An entry is identified as ``"<path>#<copy>"``; the same entry always gives the same pixels, so the teacher cache
and the student see identical inputs and a resumed run sees the same data.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..images import IMAGE_SUFFIXES, load_image

__all__ = ["TrainImages", "find_images", "random_augment", "PixelTransform"]


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

    def __init__(
        self,
        root: str | Path,
        *,
        size: int,
        copies: int = 1,
        augment: bool = False,
        seed: int = 0,
        files: list[Path] | None = None,
        categories: list[str] | None = None,
    ):
        """Every image below ``root``, or the given ``files`` (below ``root``) with their ``categories``."""
        self.root = Path(root).resolve()  # one spelling per folder: a resumed run finds its teacher cache
        self.base = find_images(self.root) if files is None else [Path(f).resolve() for f in files]
        self.size, self.copies, self.augment, self.seed = size, max(1, copies), augment, seed
        if categories is not None:
            self.categories = list(categories)
            return
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
            img, _ = random_augment(img, rng)  # no labels here: the teacher sees the same augmented copy
        return F.interpolate(img[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]


@dataclass(frozen=True)
class PixelTransform:
    """Where an augmentation moved pixels: a crop at ``(x0, y0)`` of ``size = (w, h)``, then a horizontal flip."""

    x0: int
    y0: int
    size: tuple[int, int]
    flip: bool

    def apply(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 2)`` pixel ``(x, y)`` of the original image -> the same points in the augmented image, and
        ``(N,)`` bool: still inside it (labels outside must be dropped).

        Example:
            >>> t = PixelTransform(10, 5, (40, 30), flip=True)
            >>> pts, inside = t.apply(torch.tensor([[10.0, 5.0], [60.0, 5.0]]))
            >>> pts.tolist(), inside.tolist()  # the crop's corner lands on the right edge after the flip
            ([[39.0, 0.0], [-11.0, 0.0]], [True, False])
        """
        w, h = self.size
        out = points.clone().double()
        out[:, 0] -= self.x0
        out[:, 1] -= self.y0
        if self.flip:
            out[:, 0] = (w - 1) - out[:, 0]
        inside = (out[:, 0] >= -0.5) & (out[:, 0] < w - 0.5) & (out[:, 1] >= -0.5) & (out[:, 1] < h - 0.5)
        return out.to(points.dtype), inside


def random_augment(img: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, PixelTransform]:
    """Random crop (50-100 % of the area), horizontal flip, brightness / contrast / saturation jitter.

    Returns the augmented ``(3, h, w)`` image and the :class:`PixelTransform` that moves point labels with it.
    """
    _, h, w = img.shape
    scale, ratio = rng.uniform(0.5, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(scale * w * h * ratio))))
    ch = int(min(h, round(np.sqrt(scale * w * h / ratio))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img[:, y0 : y0 + ch, x0 : x0 + cw]
    flip = bool(rng.random() < 0.5)
    if flip:
        img = img.flip(-1)
    b, c, s = rng.uniform(0.8, 1.2, size=3)
    gray = img.mean(0, keepdim=True)
    img = (img * b - img.mean() * b) * c + img.mean() * b
    img = gray + (img - gray) * s
    return img.clamp(0, 1), PixelTransform(x0, y0, (cw, ch), flip)


def labelled_pair(
    student,
    source: Path,
    target: Path,
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    *,
    size: int,
    slots: int,
    rng: np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One training pair with point labels, as model inputs: both images stretched to ``size`` (augmented first when
    ``rng`` is given: the labels move with the pixels, and labels that leave an image are dropped), the labels on
    each image's feature grid, padded to ``slots`` with ``valid`` False.

    Returns ``source``, ``target`` ``(3, size', size')`` and ``source_points``, ``target_points`` ``(slots, 2)``
    grid ``(x, y)``, ``valid`` ``(slots,)`` bool. (``student``: the :class:`DistillDiftModel` being trained.)
    """
    out: dict[str, torch.Tensor] = {}
    keep = torch.ones(len(source_points), dtype=torch.bool)
    for name, path, pts in (("source", source, source_points), ("target", target, target_points)):
        img = load_image(path)
        pts = pts.double()
        if rng is not None:
            img, moved = random_augment(img, rng)
            pts, inside = moved.apply(pts)
            keep &= inside
        x, geom = student.prepare(img, size, "stretch")
        out[name] = x
        out[name + "_points"] = geom.image_to_grid(pts).float()
    n = len(source_points)
    for name in ("source_points", "target_points"):
        out[name] = torch.cat([out[name], torch.zeros(slots - n, 2)])
    out["valid"] = torch.cat([keep, torch.zeros(slots - n, dtype=torch.bool)])
    return out


def stack_pairs(pairs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch of :func:`labelled_pair` items: ``images`` ``(2B, 3, h, w)`` (sources, then targets), rest stacked."""
    return {
        "images": torch.stack([p["source"] for p in pairs] + [p["target"] for p in pairs]),
        "source_points": torch.stack([p["source_points"] for p in pairs]),
        "target_points": torch.stack([p["target_points"] for p in pairs]),
        "valid": torch.stack([p["valid"] for p in pairs]),
    }
