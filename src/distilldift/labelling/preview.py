"""Drawings of labelled keypoints, one per image, for a person to review before training on them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..files import atomic_path
from ..images import load_image
from ..progress import ProgressBar
from ..viz import draw_keypoints, to_pil

__all__ = ["preview_labels"]


def preview_labels(
    labels: dict, folder: str | os.PathLike, *, which: str = "distilldift", progress: bool = False
) -> list[Path]:
    """Draw every image's labelled keypoints into ``folder`` (created): ``<image id>_<file stem>.png``.

    Keypoints are coloured by name (keypoint ``i`` of a category always in the same colour, :func:`palette`),
    filled when ``v = 2`` (score at least ``min_score``), hollow when ``v = 1`` (low score: check these first).

    Args:
        labels: the dict :func:`label_keypoints` returned (``file_name`` absolute paths).
        folder: where the drawings go.
        which: draw the images with annotations ``labelled_by`` this (``"distilldift"``; ``"human"`` for the
            references; ``"all"``).
        progress: show a progress bar.

    Returns:
        The drawings' paths.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> root = tempfile.mkdtemp()
        >>> Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root + "/cat.png")
        >>> labels = {"images": [{"id": 7, "file_name": root + "/cat.png"}], "categories": [{"id": 1}],
        ...           "annotations": [{"image_id": 7, "category_id": 1, "keypoints": [5, 5, 2],
        ...                            "labelled_by": "distilldift"}]}
        >>> [p.name for p in preview_labels(labels, root + "/preview")]
        ['7_cat.png']
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--preview {str(out)!r} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    skeletons = {c.get("id"): c.get("skeleton") for c in labels.get("categories", [])}
    by_image: dict = {}
    for a in labels["annotations"]:
        if which == "all" or a.get("labelled_by") == which:
            by_image.setdefault(a["image_id"], []).append(a)
    images = [im for im in labels["images"] if im["id"] in by_image]
    written = []
    with ProgressBar(progress, len(images), "drawing previews", "images") as bar:
        for im in images:
            path = out / f"{im['id']}_{Path(str(im['file_name'])).stem}.png"
            drawing = to_pil(load_image(im["file_name"]))
            s = min(1.0, 800 / drawing.height)  # one scale for every object drawn on it
            if s < 1:
                drawing = drawing.resize((max(1, round(drawing.width * s)), round(drawing.height * s)))
            for a in by_image[im["id"]]:
                kp = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(-1, 3)
                kp[:, :2] = (kp[:, :2] + 0.5) * s - 0.5
                drawing = draw_keypoints(drawing, kp, skeleton=skeletons.get(a["category_id"]))
            with atomic_path(path) as tmp:
                drawing.save(tmp, format="PNG")
            written.append(path)
            bar.advance(1)
    return written
