"""PF-WILLOW (Ham et al., CVPR 2016): ``<class>/<name>.png`` + ``pairs.csv``.

``pairs.csv`` holds all 900 ordered pairs within the 10 classes (``imageA, imageB, XA1..XA10, YA1..YA10,
XB1..XB10, YB1..YB10``, 1-based MATLAB pixels: 1 is subtracted). PCK_bbox uses the box of the *target keypoints*
(the original protocol).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .base import DatasetError, Pair, PairDataset, require

__all__ = ["read_pf_willow"]


def read_pf_willow(root: str | Path, split: str = "test") -> PairDataset:
    """Read the PF-WILLOW pairs (the benchmark has one split, all 900 pairs)."""
    root = Path(root)
    require(root, "dataset root", "PF-WILLOW", "pass the folder holding pairs.csv and the class folders")
    table = require(root / "pairs.csv", "pair list", "PF-WILLOW")
    if split not in ("test", "all"):
        raise DatasetError(f"PF-WILLOW has a single split ('test'), got {split!r}")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatasetError(f"PF-WILLOW: {str(table)!r} has no pairs")
    needed = ["imageA", "imageB"] + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise DatasetError(f"PF-WILLOW: {str(table)!r} lacks columns {missing[:6]}")
    pairs = []
    for n, r in enumerate(rows, start=2):
        try:
            a = np.array([[float(r[f"XA{i}"]), float(r[f"YA{i}"])] for i in range(1, 11)]) - 1.0
            b = np.array([[float(r[f"XB{i}"]), float(r[f"YB{i}"])] for i in range(1, 11)]) - 1.0
        except (TypeError, ValueError) as e:
            raise DatasetError(f"PF-WILLOW: {str(table)!r} line {n}: {e}") from e
        box = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 0].max()), float(b[:, 1].max()))
        category = Path(r["imageA"]).parts[0]
        pairs.append(Pair(category, root / r["imageA"], root / r["imageB"], a, b, box))
    for img in sorted({p.source for p in pairs} | {p.target for p in pairs}):
        require(img, "image", "PF-WILLOW")
    return PairDataset(
        name="pf-willow",
        root=root,
        pairs=pairs,
        protocol=f"PF-WILLOW: {len(pairs)} pairs; PCK_bbox threshold: alpha * max side of the target keypoints' box",
    )
