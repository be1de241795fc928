"""Benchmarks laid out as their downloads leave them, built from the real PF-WILLOW images in ../shared.

- :func:`pf_willow_download`: ``PF-dataset.zip`` unzipped + CNNGeometric's ``test_pairs_pf.csv`` (header, then image A,
  image B as ``PF-dataset/<class>/<name>.png``, 10 x of A, 10 y of A, 10 x of B, 10 y of B, 1-based values), beside the
  folder or, after the authors' ``download_pfwillow.sh``, inside it with the folder renamed ``PF-WILLOW``.
- :func:`spair_layout`: SPair-71k's layout (``JPEGImages/<cat>/<name>.jpg``, ``ImageAnnotation/<cat>/<name>.json`` with
  ``kps`` ``"0"`` ... ``"29"`` -> ``[x, y]`` or ``null``, ``PairAnnotation/test/<id>-<src>-<trg>:<cat>.json`` with
  ``category``, ``src_imname``, ``trg_imname``, ``src_imsize`` / ``trg_imsize`` ``[W, H, 3]``, ``src_kps`` /
  ``trg_kps``, ``kps_ids`` (keypoints visible in both), ``src_bndbox`` / ``trg_bndbox`` ``[x1, y1, x2, y2]``) made of
  PF-WILLOW photos, their 10 keypoints as SPair ids 0-9, and mirrored copies whose keypoints carry their left/right
  partner's id (as SPair annotates a mirrored object), so that pose-align matters.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import PF_WILLOW
from distilldift.datasets import SPAIR_LEFT_RIGHT

SPAIR_CLASSES = {"car(G)": "car", "car(M)": "car", "duck(S)": "bird", "motorbike(G)": "motorbike"}


def pf_willow_rows() -> list[list[str]]:
    with open(PF_WILLOW / "pairs.csv", newline="") as f:
        return list(csv.reader(f))[1:]


def pf_willow_download(top: Path, renamed: bool) -> Path:
    """PF-WILLOW as downloaded under ``top`` (images linked from ../shared); returns the dataset folder."""
    folder = top / ("PF-WILLOW" if renamed else "PF-dataset")
    for cls in sorted(p for p in PF_WILLOW.iterdir() if p.is_dir()):
        (folder / cls.name).mkdir(parents=True)
        for f in cls.glob("*.png"):
            (folder / cls.name / f.name).symlink_to(f)
    header = "imageA,imageB," + ",".join(f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11))
    lines = [header] + [",".join([f"PF-dataset/{r[0]}", f"PF-dataset/{r[1]}", *r[2:]]) for r in pf_willow_rows()]
    (folder if renamed else top).joinpath("test_pairs_pf.csv").write_text("\n".join(lines) + "\n")
    return folder


def _keypoints() -> dict[str, np.ndarray]:
    """PF-WILLOW image -> its 10 keypoints, 0-based pixels."""
    out = {}
    for r in pf_willow_rows():
        v = np.array([float(x) for x in r[2:]]) - 1.0
        out[r[0]], out[r[1]] = v[:20].reshape(2, 10).T, v[20:].reshape(2, 10).T
    return out


def spair_layout(root: Path, per_class: int = 3, seed: int = 0, visible: float = 0.8) -> Path:
    """An SPair-71k test split under ``root`` (see the module docstring); returns ``root``."""
    rng = np.random.default_rng(seed)
    points = _keypoints()
    annotations: dict[str, dict[str, dict]] = {}  # category -> image name -> record
    for cls, cat in SPAIR_CLASSES.items():
        partner = {a: b for x, y in SPAIR_LEFT_RIGHT[cat] for a, b in ((x, y), (y, x))}
        (root / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
        (root / "ImageAnnotation" / cat).mkdir(parents=True, exist_ok=True)
        for rel in sorted(k for k in points if k.startswith(f"{cls}/"))[:per_class]:
            with Image.open(PF_WILLOW / rel) as im:
                rgb = im.convert("RGB")
            w, h = rgb.size
            pts = np.round(points[rel]).astype(int)
            seen = rng.random(10) < visible
            stem = f"{cls.replace('(', '_').replace(')', '')}_{Path(rel).stem}"
            mirror = {k: [int(w - 1 - pts[partner.get(k, k), 0]), int(pts[partner.get(k, k), 1])] for k in range(10)}
            mirror_seen = {k: bool(seen[partner.get(k, k)]) for k in range(10)}
            for name, image, kps in (
                (stem, rgb, {k: [int(pts[k, 0]), int(pts[k, 1])] if seen[k] else None for k in range(10)}),
                (f"{stem}_m", rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {
                    k: mirror[k] if mirror_seen[k] else None for k in range(10)
                }),
            ):  # fmt: skip
                image.save(root / "JPEGImages" / cat / f"{name}.jpg", quality=95)
                record = {"filename": f"{name}.jpg", "category": cat, "image_width": w, "image_height": h}
                record["kps"] = {str(i): kps.get(i) for i in range(30)}
                (root / "ImageAnnotation" / cat / f"{name}.json").write_text(json.dumps(record))
                annotations.setdefault(cat, {})[name] = record
    folder = root / "PairAnnotation" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for cat, records in annotations.items():
        names = sorted(records)
        for src in names:
            for trg in names:
                if src == trg or (src.endswith("_m") and trg.endswith("_m")):
                    continue
                a, b = records[src], records[trg]
                ids = [i for i in range(30) if a["kps"][str(i)] is not None and b["kps"][str(i)] is not None]
                if not ids:
                    continue
                tk = np.array([b["kps"][str(i)] for i in ids])
                box = [int(tk[:, 0].min()), int(tk[:, 1].min()), int(tk[:, 0].max()) + 1, int(tk[:, 1].max()) + 1]
                pair = {
                    "category": cat,
                    "src_imname": a["filename"],
                    "trg_imname": b["filename"],
                    "src_imsize": [a["image_width"], a["image_height"], 3],
                    "trg_imsize": [b["image_width"], b["image_height"], 3],
                    "src_kps": [a["kps"][str(i)] for i in ids],
                    "trg_kps": [b["kps"][str(i)] for i in ids],
                    "kps_ids": ids,
                    "src_bndbox": [0, 0, a["image_width"] - 1, a["image_height"] - 1],
                    "trg_bndbox": box,
                }
                n += 1
                (folder / f"{n:06d}-{Path(src).stem}-{Path(trg).stem}:{cat}.json").write_text(json.dumps(pair))
    return root
