"""CUB-200-2011 (Wah et al., 2011): ``images.txt``, ``images/``, ``parts/part_locs.txt``, ``parts/parts.txt``,
``bounding_boxes.txt``, ``train_test_split.txt``.

Pairs are drawn reproducibly (seeded) from the test split, among different images, keeping the parts visible in
both; pairs with fewer than ``min_points`` such parts are redrawn. Part locations are taken as pixel coordinates
as annotated. Left/right parts (eyes, legs, wings) swap under pose-align.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import DatasetError, Pair, PairDataset, require

__all__ = ["read_cub"]


def _table(path: Path, columns: int, dataset: str = "CUB-200-2011") -> list[list[str]]:
    rows = []
    for n, line in enumerate(require(path, "file", dataset).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1) if columns else line.split()
        if len(parts) < columns:
            raise DatasetError(f"{dataset}: {str(path)!r} line {n}: expected {columns} columns, got {line!r}")
        rows.append(parts)
    return rows


def read_cub(
    root: str | Path, split: str = "test", *, n_pairs: int = 10000, seed: int = 0, min_points: int = 3
) -> PairDataset:
    """Read CUB-200-2011 and draw ``n_pairs`` pairs from ``split`` (``"test"`` or ``"train"``) with ``seed``."""
    root = Path(root)
    require(root, "dataset root", "CUB-200-2011", "pass the CUB_200_2011 folder (holding images.txt)")
    if split not in ("test", "train"):
        raise DatasetError(f"CUB-200-2011: split must be 'test' or 'train', got {split!r}")
    try:
        images = {int(i): p for i, p in _table(root / "images.txt", 2)}
        is_train = {int(i): t == "1" for i, t in _table(root / "train_test_split.txt", 2)}
        boxes = {int(r[0]): [float(v) for v in r[1:5]] for r in _table(root / "bounding_boxes.txt", 5)}
        names = {int(i): n.strip() for i, n in _table(root / "parts" / "parts.txt", 2)}
        locs = _table(root / "parts" / "part_locs.txt", 5)
        parts: dict[int, dict[int, tuple[float, float]]] = {}
        for r in locs:
            if r[4].strip() not in ("0", "1"):
                raise DatasetError(f"visibility must be 0 or 1, got {r[4]!r}")
            if r[4].strip() == "1":
                parts.setdefault(int(r[0]), {})[int(r[1])] = (float(r[2]), float(r[3]))
    except ValueError as e:
        raise DatasetError(f"CUB-200-2011: malformed annotation: {e}") from e
    ids = sorted(i for i in images if is_train.get(i) == (split == "train") and len(parts.get(i, {})) >= min_points)
    if len(ids) < 2:
        raise DatasetError(f"CUB-200-2011: fewer than 2 {split} images with {min_points}+ visible parts")
    swaps = []
    for pid, name in names.items():
        m = re.fullmatch(r"left (.+)", name)
        if m:
            right = [q for q, other in names.items() if other == f"right {m.group(1)}"]
            if right:
                swaps.append((pid, right[0]))
    rng = np.random.default_rng(seed)
    pairs, tries = [], 0
    while len(pairs) < n_pairs and tries < 20 * n_pairs:
        tries += 1
        a, b = (int(v) for v in rng.choice(ids, size=2, replace=False))
        common = sorted(set(parts[a]) & set(parts[b]))
        if len(common) < min_points:
            continue
        x, y, w, h = boxes[b]
        pairs.append(
            Pair(
                "bird",
                root / "images" / images[a],
                root / "images" / images[b],
                np.array([parts[a][k] for k in common]),
                np.array([parts[b][k] for k in common]),
                (x, y, x + w, y + h),
                tuple(common),
            )
        )
    for p in pairs[:: max(1, len(pairs) // 50)]:
        require(p.source, "image", "CUB-200-2011")
    return PairDataset(
        name="cub",
        root=root,
        pairs=pairs,
        left_right={"bird": swaps},
        protocol=(
            f"CUB-200-2011 {split}: {len(pairs)} random pairs (seed {seed}), parts visible in both; "
            "PCK_bbox threshold: alpha * max side of the target bird's box"
        ),
    )
