"""SPair-71k (Min et al., 2019): ``PairAnnotation/{trn,val,test}/*.json``, ``JPEGImages/<category>/``.

Each pair JSON has ``category``, ``src_imname``, ``trg_imname``, ``src_kps`` / ``trg_kps`` (lists of ``[x, y]``),
``kps_ids``, ``src_bndbox`` / ``trg_bndbox`` (``[x1, y1, x2, y2]``). Keypoints are taken as 0-based pixel
coordinates. The left/right keypoint pairs per category (for pose-align) follow GeoAware-SC (Zhang et al., CVPR
2024, "Telling Left from Right"), the table the paper's pose-align uses.
"""

from __future__ import annotations

from pathlib import Path

from .base import DatasetError, Pair, PairDataset, as_array, read_json, require

__all__ = ["read_spair", "SPAIR_LEFT_RIGHT"]

# category: (number of keypoint ids, pairs of ids that swap when the image is mirrored)
_FLIP: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "aeroplane": (25, [(4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19), (20, 21)]),
    "bicycle": (14, [(2, 3), (6, 7), (9, 10)]),
    "bird": (17, [(1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)]),
    "boat": (14, [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)]),
    "bottle": (10, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]),
    "bus": (
        31,
        [
            (0, 1),
            (2, 3),
            (5, 6),
            (8, 18),
            (11, 21),
            (9, 19),
            (12, 22),
            (10, 20),
            (13, 23),
            (14, 15),
            (24, 25),
            (16, 17),
            (26, 27),
        ],
    ),
    "car": (
        30,
        [
            (0, 1),
            (2, 3),
            (6, 7),
            (10, 20),
            (13, 23),
            (11, 21),
            (14, 24),
            (12, 22),
            (15, 25),
            (16, 17),
            (26, 27),
            (18, 19),
            (28, 29),
        ],
    ),
    "cat": (15, [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)]),
    "chair": (14, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)]),
    "cow": (21, [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)]),
    "dog": (16, [(0, 1), (2, 3), (4, 5), (9, 10), (11, 12)]),
    "horse": (20, [(0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)]),
    "motorbike": (13, [(0, 1), (2, 3)]),
    "person": (20, [(0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)]),
    "pottedplant": (9, [(0, 2), (4, 5), (6, 8)]),
    "sheep": (21, [(0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)]),
    "train": (18, [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)]),
    "tvmonitor": (16, [(0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)]),
}
SPAIR_LEFT_RIGHT: dict[str, list[tuple[int, int]]] = {k: v[1] for k, v in _FLIP.items()}
_SPLITS = {"train": "trn", "trn": "trn", "val": "val", "validation": "val", "test": "test"}


def read_spair(root: str | Path, split: str = "test", categories: list[str] | None = None) -> PairDataset:
    """Read SPair-71k pairs of ``split`` (``"test"``, ``"val"``, ``"trn"``), optionally of some categories only."""
    root = Path(root)
    require(root, "dataset root", "SPair-71k", "download SPair-71k and pass its folder (holding PairAnnotation/)")
    if split not in _SPLITS:
        raise DatasetError(f"SPair-71k: unknown split {split!r}; use one of test, val, trn")
    ann = require(root / "PairAnnotation" / _SPLITS[split], "split folder", "SPair-71k")
    images = require(root / "JPEGImages", "image folder", "SPair-71k")
    files = sorted(ann.glob("*.json"))
    if not files:
        raise DatasetError(f"SPair-71k: no pair annotations (*.json) in {str(ann)!r}")
    pairs = []
    for f in files:
        d = read_json(f)
        try:
            cat = d["category"]
            if categories is not None and cat not in categories:
                continue
            src, trg = images / cat / d["src_imname"], images / cat / d["trg_imname"]
            ids = tuple(int(k) for k in d["kps_ids"])
            box = tuple(float(v) for v in d["trg_bndbox"])
            p = Pair(cat, src, trg, as_array(d["src_kps"], f.name), as_array(d["trg_kps"], f.name), box, ids)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"SPair-71k: annotation {str(f)!r} lacks or mangles a field: {e!r}") from e
        if len(ids) != len(p.source_points):
            raise DatasetError(f"SPair-71k: {f.name}: {len(ids)} kps_ids for {len(p.source_points)} keypoints")
        pairs.append(p)
    for p in pairs[:: max(1, len(pairs) // 50)] + pairs[-1:]:  # spot-check images exist
        require(p.source, "image", "SPair-71k")
        require(p.target, "image", "SPair-71k")
    return PairDataset(
        name="spair",
        root=root,
        pairs=pairs,
        left_right=SPAIR_LEFT_RIGHT,
        protocol=f"SPair-71k {split}; PCK_bbox threshold: alpha * max side of the target's box",
    )
