"""CUB-200-2011 (Wah et al., 2011), as ``CUB_200_2011.tgz`` unpacks: ``images.txt``, ``images/<class>/<name>.jpg``,
``image_class_labels.txt``, ``classes.txt``, ``train_test_split.txt``, ``bounding_boxes.txt``, ``parts/parts.txt``,
``parts/part_locs.txt``. The flat ``images/<class>_<name>.jpg`` that the authors' ``prepare_cub.sh`` makes is read too.

Pairs follow the authors' evaluation (CompVis/distilldift ``train/``): every unordered pair of two images of the same
species in the split (``images.txt`` order, species by species), of which ``torch.randperm`` with ``seed`` picks
``n_pairs``; with the defaults (1,000, seed 42) these are the authors' pairs. Pairs with fewer than ``min_points``
parts visible in both images are then left out (the authors keep them; they add no point to the per-point PCK).
Part locations are used as annotated. Left/right parts (``left eye`` / ``left_eye`` ...) swap under pose-align.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import torch

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


def _left_right(names: dict[int, str]) -> list[tuple[int, int]]:
    """Part id pairs ``left X`` <-> ``right X`` (any spelling: spaces, underscores, case)."""
    canon = {pid: re.sub(r"[\s_]+", " ", n).strip().lower() for pid, n in names.items()}
    by_name = {n: pid for pid, n in canon.items()}
    pairs = [(pid, by_name.get(f"right {n[5:]}")) for pid, n in canon.items() if n.startswith("left ")]
    return [(left, right) for left, right in pairs if right is not None]


def _image_path(root: Path, rel: str) -> Path:
    """``images/<class>/<name>``, or the flattened ``images/<class>_<name>`` of the authors' ``prepare_cub.sh``."""
    path = root / "images" / rel
    if not path.exists() and "/" in rel:
        flat = root / "images" / rel.replace("/", "_", 1)
        if flat.exists():
            return flat
    return path


def read_cub(
    root: str | Path, split: str = "test", *, n_pairs: int = 1000, seed: int = 42, min_points: int = 1
) -> PairDataset:
    """Read CUB-200-2011 and draw ``n_pairs`` same-species pairs from ``split`` (``"test"`` or ``"train"``).

    See the module docstring for how pairs are drawn (the defaults give the authors' 1,000 test pairs).
    """
    root = Path(root)
    require(root, "dataset root", "CUB-200-2011", "pass the CUB_200_2011 folder (holding images.txt)")
    if split not in ("test", "train"):
        raise DatasetError(f"CUB-200-2011: split must be 'test' or 'train', got {split!r}")
    try:
        images = {int(i): p.strip() for i, p in _table(root / "images.txt", 2)}
        is_train = {int(i): t.strip() == "1" for i, t in _table(root / "train_test_split.txt", 2)}
        species = {int(i): int(c) for i, c in _table(root / "image_class_labels.txt", 2)}
        classes = {int(i): n.strip().split(".", 1)[-1] for i, n in _table(root / "classes.txt", 2)}
        boxes = {int(r[0]): [float(v) for v in r[1:5]] for r in _table(root / "bounding_boxes.txt", 5)}
        names = {int(i): n.strip() for i, n in _table(root / "parts" / "parts.txt", 2)}
        parts: dict[int, dict[int, tuple[float, float]]] = {}
        for r in _table(root / "parts" / "part_locs.txt", 5):
            if r[4].strip() not in ("0", "1"):
                raise DatasetError(f"CUB-200-2011: part_locs.txt: visibility must be 0 or 1, got {r[4]!r}")
            if r[4].strip() == "1":
                parts.setdefault(int(r[0]), {})[int(r[1])] = (float(r[2]), float(r[3]))
    except ValueError as e:
        raise DatasetError(f"CUB-200-2011: malformed annotation: {e}") from e
    unknown = sorted({c for c in species.values() if c not in classes})
    if unknown:
        raise DatasetError(f"CUB-200-2011: image_class_labels.txt names classes {unknown[:5]} missing in classes.txt")
    chosen = [i for i in images if is_train.get(i) == (split == "train")]  # images.txt order
    candidates = [
        pair for c in sorted(classes) for pair in itertools.combinations([i for i in chosen if species.get(i) == c], 2)
    ]
    if not candidates:
        raise DatasetError(f"CUB-200-2011: no two {split} images of the same species")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:n_pairs].tolist()
    sample = [candidates[k] for k in order]
    pairs = []
    for a, b in sample:
        common = sorted(set(parts.get(a, {})) & set(parts.get(b, {})))
        if len(common) < min_points:
            continue
        x, y, w, h = boxes[b]
        pairs.append(
            Pair(
                classes[species[a]],
                _image_path(root, images[a]),
                _image_path(root, images[b]),
                np.array([parts[a][k] for k in common]),
                np.array([parts[b][k] for k in common]),
                (x, y, x + w, y + h),
                tuple(common),
            )
        )
    for p in pairs[:: max(1, len(pairs) // 50)]:
        require(p.source, "image", "CUB-200-2011")
    swaps = _left_right(names)
    skipped = len(sample) - len(pairs)
    theirs = " (the authors' sample)" if (seed, n_pairs, split) == (42, 1000, "test") else ""
    return PairDataset(
        name="cub",
        root=root,
        pairs=pairs,
        left_right={classes[c]: swaps for c in classes},
        protocol=(
            f"CUB-200-2011 {split}: {len(sample)} of the {len(candidates)} same-species image pairs, drawn with seed "
            f"{seed}{theirs}"
            + (f", less {skipped} with fewer than {min_points} parts visible in both" if skipped else "")
            + "; parts visible in both; PCK_bbox threshold: alpha * max side of the target bird's box"
        ),
        paper_program="train/eval.py",
    )
