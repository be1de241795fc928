"""Readers for the semantic-correspondence benchmarks' on-disk formats (used by `evaluate` and `distilldift eval`).

Every reader returns a :class:`PairDataset`: a list of :class:`Pair` records with keypoints as ``(x, y)`` pixel
coordinates in distilldift's convention (integers at pixel centres, origin at the top-left pixel's centre),
the box that sets the PCK threshold, and, where the dataset names left/right keypoints, the permutation that
pose-align (``flip``) needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["Pair", "PairDataset", "DatasetError", "read_json"]


@dataclass(frozen=True)
class Pair:
    """One annotated image pair.

    Attributes:
        category: object category (SPair/PF-WILLOW class; CUB: ``"bird"``).
        source, target: image paths.
        source_points, target_points: ``(N, 2)`` float ``(x, y)`` pixels; point ``i`` of one corresponds to point
            ``i`` of the other.
        target_bbox: ``(x1, y1, x2, y2)`` box whose larger side sets PCK_bbox (SPair/CUB: the object box;
            PF-WILLOW: the target keypoints' extent).
        keypoint_ids: the dataset's keypoint id of each point (for left/right swaps), or empty.
    """

    category: str
    source: Path
    target: Path
    source_points: np.ndarray
    target_points: np.ndarray
    target_bbox: tuple[float, float, float, float]
    keypoint_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.source_points.shape != self.target_points.shape or self.source_points.ndim != 2:
            raise DatasetError(
                f"pair {self.source.name} -> {self.target.name}: keypoints {self.source_points.shape} and "
                f"{self.target_points.shape} do not correspond"
            )


@dataclass
class PairDataset:
    """A benchmark split: its pairs and how to flip its keypoints.

    Attributes:
        name: dataset name (``"spair"``, ``"pf-willow"``, ``"cub"``).
        root: the folder it was read from.
        pairs: the annotated pairs.
        left_right: per category, the keypoint id pairs that swap under a horizontal flip (empty: none).
        protocol: one line describing the pairs and the bbox threshold, printed with results.
        index_base: the pixel index of the annotation files' first pixel, which the reader subtracted (1: MATLAB's
            1-based PF-WILLOW / PF-PASCAL; 0 elsewhere). The authors' evaluation uses the files' own values, so
            ``protocol="paper"`` adds it back.
        paper_program: which of the authors' programs evaluated this benchmark in the paper, for
            ``protocol="paper"``: ``"eval/eval.py"`` (SPair-71k, PF-PASCAL) or ``"train/eval.py"`` (PF-WILLOW, CUB).
    """

    name: str
    root: Path
    pairs: list[Pair]
    left_right: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    protocol: str = ""
    index_base: int = 0
    paper_program: str = "eval/eval.py"

    def __len__(self) -> int:
        return len(self.pairs)

    def flip_permutation(self, pair: Pair) -> list[int] | None:
        """For pose-align: query ``i`` is taken at the mirror of point ``perm[i]`` (its left/right partner when
        the pair annotates both, else itself). ``None`` when the dataset has no left/right keypoints.

        Example:
            >>> import numpy as np
            >>> from pathlib import Path
            >>> p = Pair("cat", Path("a"), Path("b"), np.zeros((3, 2)), np.zeros((3, 2)), (0, 0, 1, 1), (0, 1, 8))
            >>> PairDataset("spair", Path("."), [p], {"cat": [(0, 1)]}).flip_permutation(p)
            [1, 0, 2]
        """
        swaps = self.left_right.get(pair.category)
        if not swaps or not pair.keypoint_ids:
            return None
        partner = {}
        for a, b in swaps:
            partner[a], partner[b] = b, a
        index = {k: i for i, k in enumerate(pair.keypoint_ids)}
        return [index.get(partner.get(k, k), i) for i, k in enumerate(pair.keypoint_ids)]


def read_json(path: Path) -> dict:
    """Parse a JSON annotation file; a corrupt one is a :class:`DatasetError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"corrupt annotation file {str(path)!r}: {e}") from e


def require(path: Path, what: str, dataset: str, hint: str = "") -> Path:
    """``path`` if it exists, else a :class:`DatasetError` naming the missing piece of ``dataset``'s layout."""
    if not path.exists():
        raise DatasetError(f"{dataset}: missing {what} {str(path)!r}" + (f"; {hint}" if hint else ""))
    return path


def as_array(values: Sequence, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        arr = arr.reshape(-1, 2) if arr.size % 2 == 0 else arr
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"{what}: expected a list of [x, y], got shape {arr.shape}")
    return arr
