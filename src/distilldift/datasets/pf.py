"""Proposal Flow benchmarks (Ham et al., CVPR 2016 / TPAMI 2018): PF-WILLOW and PF-PASCAL, as downloaded.

Both ship as a zip of images plus a pair list from the CNNGeometric project (Rocco et al.) that every paper since
evaluates on; columns are read by position, after a header row:

- PF-WILLOW: ``PF-dataset.zip`` (``PF-dataset/<class>/<name>.png``) and ``test_pairs_pf.csv``: image A, image B
  (both ``PF-dataset/<class>/<name>.png``), then 10 x of A, 10 y of A, 10 x of B, 10 y of B. The authors'
  ``download_pfwillow.sh`` moves the CSV into the folder and renames it ``PF-WILLOW/``; ``pairs.csv`` with paths
  relative to the folder is read too. PCK_bbox: the box of the target's keypoints (the original protocol).
- PF-PASCAL: ``PF-dataset-PASCAL.zip`` (``PF-dataset-PASCAL/JPEGImages/<name>.jpg``) and
  ``{test,val,trn}_pairs_pf_pascal.csv``: image A, image B (``PF-dataset-PASCAL/JPEGImages/...``), class (1-20, VOC
  order), then x of A, y of A, x of B, y of B as ``;``-separated lists. The pair list has no object boxes, and the
  literature reports PCK_img (alpha * the target image's longer side); the bbox threshold is that image box too.

``root`` is the folder holding the pair list (``PF-WILLOW/``, ``PF-dataset/``, ``PF-dataset-PASCAL/``) or the folder
above it. Coordinates are MATLAB's 1-based pixels: 1 is subtracted (``PairDataset.index_base = 1`` records it).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetError, Pair, PairDataset, require

__all__ = ["read_pf_willow", "read_pf_pascal", "PASCAL_CLASSES"]

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _find_table(root: Path, names: Sequence[str], folders: Sequence[str], dataset: str, hint: str) -> Path:
    """The pair list in ``root`` or in one of ``folders`` below it."""
    require(root, "dataset root", dataset, hint)
    for base in (root, *(root / f for f in folders)):
        for name in names:
            if (base / name).is_file():
                return base / name
    raise DatasetError(f"{dataset}: no pair list {' / '.join(names)} in {str(root)!r}; {hint}")


def _image(table: Path, name: str, dataset: str, line: int) -> Path:
    """An image named in the pair list: relative to the list's folder or the folder above, with or without the list's
    own first path component (the download's folder name, e.g. ``PF-dataset/``, after the folder was renamed)."""
    rel = Path(name.strip().replace("\\", "/"))
    candidates = [table.parent / rel, table.parent.parent / rel]
    if len(rel.parts) > 1:
        candidates.append(table.parent / Path(*rel.parts[1:]))
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(
        f"{dataset}: {str(table)!r} line {line}: image {name!r} not found (looked for "
        f"{', '.join(repr(str(c)) for c in candidates)})"
    )


def _rows(table: Path, columns: int, dataset: str) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of the data rows (a header row, if any, skipped)."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{dataset}: {str(table)!r} is not a text CSV file: {e}") from None
    if rows and not _is_number(rows[0][1][2] if len(rows[0][1]) > 2 else ""):
        rows = rows[1:]
    if not rows:
        raise DatasetError(f"{dataset}: {str(table)!r} has no pairs")
    for n, r in rows:
        if len(r) < columns:
            raise DatasetError(f"{dataset}: {str(table)!r} line {n}: {len(r)} columns, expected {columns}")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text.split(";")[0])
        return True
    except ValueError:
        return False


def _floats(cells: Sequence[str], table: Path, line: int, dataset: str) -> np.ndarray:
    try:
        return np.array([float(v) for c in cells for v in c.split(";") if v.strip()], dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{dataset}: {str(table)!r} line {line}: {e}") from None


def read_pf_willow(root: str | Path, split: str = "test") -> PairDataset:
    """Read PF-WILLOW's 900 pairs (one split) from its download (see the module docstring).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp()) / "PF-WILLOW"
        >>> (root / "duck(S)").mkdir(parents=True)
        >>> for n in ("a", "b"): Image.new("RGB", (30, 20)).save(root / "duck(S)" / f"{n}.png")
        >>> xy = ",".join(["5"] * 40)
        >>> _ = (root / "test_pairs_pf.csv").write_text(f"imageA,imageB,...\\nPF-dataset/duck(S)/a.png,"
        ...                                          f"PF-dataset/duck(S)/b.png,{xy}\\n")
        >>> d = read_pf_willow(root.parent)  # the folder above works too
        >>> d.pairs[0].category, d.pairs[0].source_points[0].tolist(), d.index_base
        ('duck(S)', [4.0, 4.0], 1)
    """
    name, hint = "PF-WILLOW", "pass the unzipped PF-dataset (or PF-WILLOW) folder holding test_pairs_pf.csv"
    if split not in ("test", "all"):
        raise DatasetError(f"{name} has a single split ('test'), got {split!r}")
    table = _find_table(Path(root), ("test_pairs_pf.csv", "pairs.csv"), ("PF-WILLOW", "PF-dataset"), name, hint)
    pairs = []
    for line, r in _rows(table, 42, name):
        values = _floats(r[2:42], table, line, name) - 1.0  # MATLAB's 1-based pixels
        a, b = values[:20].reshape(2, 10).T, values[20:].reshape(2, 10).T
        src, trg = _image(table, r[0], name, line), _image(table, r[1], name, line)
        box = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 0].max()), float(b[:, 1].max()))
        pairs.append(Pair(trg.parent.name, src, trg, a, b, box))
    return PairDataset(
        name="pf-willow",
        root=table.parent,
        pairs=pairs,
        protocol=f"PF-WILLOW ({table.name}); PCK_bbox threshold: alpha * max side of the target keypoints' box",
        index_base=1,
        paper_program="train/eval.py",
    )


def read_pf_pascal(root: str | Path, split: str = "test") -> PairDataset:
    """Read PF-PASCAL's pairs of ``split`` (``"test"``: 299 pairs; ``"val"``; ``"trn"``) from its download.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> top = pathlib.Path(tempfile.mkdtemp())
        >>> (top / "PF-dataset-PASCAL" / "JPEGImages").mkdir(parents=True)
        >>> for n in ("a", "b"): Image.new("RGB", (40, 30)).save(top / "PF-dataset-PASCAL" / "JPEGImages" / f"{n}.jpg")
        >>> _ = (top / "PF-dataset-PASCAL" / "test_pairs_pf_pascal.csv").write_text(
        ...     "source_image,target_image,class,XA,YA,XB,YB\\n"
        ...     "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/b.jpg,8,1;11,1;21,2;12,2;22\\n")
        >>> p = read_pf_pascal(top).pairs[0]
        >>> p.category, p.source_points.tolist(), p.target_bbox
        ('cat', [[0.0, 0.0], [10.0, 20.0]], (-0.5, -0.5, 39.5, 29.5))
    """
    name = "PF-PASCAL"
    hint = "pass the unzipped PF-dataset-PASCAL folder holding test_pairs_pf_pascal.csv (or the folder above)"
    splits = {"test": "test", "val": "val", "validation": "val", "trn": "trn", "train": "trn"}
    if split not in splits:
        raise DatasetError(f"{name}: unknown split {split!r}; use one of test, val, trn")
    table = _find_table(Path(root), (f"{splits[split]}_pairs_pf_pascal.csv",), ("PF-dataset-PASCAL",), name, hint)
    pairs = []
    for line, r in _rows(table, 7, name):
        try:
            category = PASCAL_CLASSES[int(float(r[2])) - 1]
        except (ValueError, IndexError):
            raise DatasetError(f"{name}: {str(table)!r} line {line}: class {r[2]!r} is not 1-20") from None
        xa, ya, xb, yb = (_floats([c], table, line, name) - 1.0 for c in r[3:7])  # MATLAB's 1-based pixels
        if not len(xa) == len(ya) == len(xb) == len(yb) or not len(xa):
            raise DatasetError(f"{name}: {str(table)!r} line {line}: x and y lists of different lengths")
        src, trg = _image(table, r[0], name, line), _image(table, r[1], name, line)
        try:
            with Image.open(trg) as im:
                w, h = im.size
        except OSError as e:
            raise DatasetError(f"{name}: cannot read {str(trg)!r}: {e}") from None
        pairs.append(
            Pair(category, src, trg, np.stack([xa, ya], 1), np.stack([xb, yb], 1), (-0.5, -0.5, w - 0.5, h - 0.5))
        )
    return PairDataset(
        name="pf-pascal",
        root=table.parent,
        pairs=pairs,
        protocol=(
            f"PF-PASCAL {splits[split]} ({table.name}); PCK_img (alpha * max side of the target image) is the "
            "literature's metric; the pair list has no boxes, so the bbox columns use the image box too"
        ),
        index_base=1,
    )
