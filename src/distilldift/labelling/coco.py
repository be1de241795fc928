"""COCO keypoints files: the references a person annotated, read and checked; the labelled file written.

The format is the one CVAT, Label Studio, Roboflow and mmpose export (and pycocotools reads): ``images``
(``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``image_id``, ``category_id``, ``keypoints``
``[x1, y1, v1, x2, ...]`` with ``v`` 0 = unlabelled, 1 = labelled but not visible, 2 = visible) and ``categories``
(``id``, ``name``, ``keypoints``: the names, optionally ``skeleton``). Pixel coordinates: COCO's ``x`` runs from the
left edge of the image (0) to its right edge (``width``); matching uses pixel centres at integers, which differ
from COCO's by half a pixel - well inside any labelling tolerance - so points are passed through unchanged.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidInputError

__all__ = ["Category", "Reference", "References", "read_references", "flip_permutation"]

_SIDES = re.compile(r"^(left|right)([_ ].*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Category:
    """A category of the references: its COCO ``id``, ``name``, keypoint ``names`` and the whole COCO record."""

    id: int
    name: str
    names: tuple[str, ...]
    record: dict


@dataclass(frozen=True)
class Reference:
    """One annotated object: its image's ``path``, the COCO ``image`` record, ``category`` id and ``keypoints``
    ``(K, 3)`` float ``(x, y, v)`` in the image's pixels."""

    path: Path
    image: dict
    category: int
    keypoints: torch.Tensor


@dataclass(frozen=True)
class References:
    """A references file read and checked: ``references`` (one per annotated object), ``categories`` by id, and
    the file's ``data`` (the output keeps its images and annotations untouched)."""

    references: list[Reference]
    categories: dict[int, Category]
    data: dict
    root: Path | None = None

    def image_path(self, image: dict) -> Path:
        """Where a COCO ``image`` record's file is: ``file_name`` as it is when absolute, else below :attr:`root`."""
        path = Path(str(image.get("file_name", ""))).expanduser()
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return path


def flip_permutation(names: tuple[str, ...] | list[str]) -> list[int] | None:
    """Each keypoint's mirror partner by name (``left_eye`` <-> ``right_eye``, ``Left wing`` <-> ``Right wing``);
    ``None`` when no name has a partner (then nothing says what a mirrored reference means: no pose-align).

    Example:
        >>> flip_permutation(["nose", "left_eye", "right_eye"])
        [0, 2, 1]
        >>> flip_permutation(["top", "bottom"]) is None
        True
    """
    index = {n.lower(): i for i, n in enumerate(names)}
    out, paired = [], False
    for i, name in enumerate(names):
        m = _SIDES.match(name)
        partner = None
        if m:
            other = ("right" if m[1].lower() == "left" else "left") + m[2]
            partner = index.get(other.lower())
        paired |= partner is not None
        out.append(i if partner is None else partner)
    return out if paired else None


def _load(source: str | os.PathLike | dict) -> tuple[dict, str]:
    if isinstance(source, dict):
        return source, "the references"
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"references file {str(path)!r} not found: give a COCO keypoints JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{path}: not JSON ({e}); give a COCO keypoints file") from None
    return data, str(path)


def _categories(data: dict, where: str) -> dict[int, Category]:
    out = {}
    for c in data.get("categories") or []:
        names = c.get("keypoints") if isinstance(c, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InvalidInputError(
                f"{where}: category {c.get('name', c) if isinstance(c, dict) else c!r} has no 'keypoints' list of "
                "names; export a COCO *keypoints* file"
            )
        out[c["id"]] = Category(c["id"], str(c.get("name", c["id"])), tuple(names), c)
    if not out:
        raise InvalidInputError(f"{where}: no categories with keypoints; export a COCO keypoints file")
    return out


def read_references(
    source: str | os.PathLike | dict, image_root: str | os.PathLike | None = None, *, check_files: bool = True
) -> References:
    """Read and check a COCO keypoints file of annotated references.

    Args:
        source: the file, or its content as a dict.
        image_root: the folder ``file_name`` is relative to (default: the file's folder; the current folder for a
            dict). Absolute ``file_name`` paths are used as they are.
        check_files: check that every reference image exists.

    Returns:
        :class:`References`: every annotation with at least one labelled keypoint (``v > 0``) is a reference.

    Raises:
        InvalidInputError: not JSON, no categories with keypoint names, a keypoint count that disagrees with its
            category, an annotation of an unknown image or category, no labelled keypoint at all, or an image file
            that does not exist - one line naming what and where.

    Example:
        >>> refs = read_references({"images": [{"id": 1, "file_name": "/data/cat.png", "width": 64, "height": 48}],
        ...     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [10, 20, 2, 0, 0, 0]}],
        ...     "categories": [{"id": 1, "name": "cat", "keypoints": ["left_ear", "right_ear"]}]}, check_files=False)
        >>> refs.references[0].keypoints.tolist(), refs.categories[1].names
        ([[10.0, 20.0, 2.0], [0.0, 0.0, 0.0]], ('left_ear', 'right_ear'))
    """
    data, where = _load(source)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InvalidInputError(f"{where}: no 'annotations' list; give a COCO keypoints file")
    cats = _categories(data, where)
    root = Path(image_root) if image_root is not None else (Path(where).parent if where != "the references" else None)
    if not isinstance(data.get("images", []), list):
        raise InvalidInputError(f"{where}: 'images' is not a list; give a COCO keypoints file")
    for im in data.get("images") or []:
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise InvalidInputError(f"{where}: image record {im!r} has no 'id' and 'file_name'")
    images = {im["id"]: im for im in data.get("images") or []}
    out = References([], cats, data, root)
    for a in data["annotations"]:
        if not isinstance(a, dict):
            raise InvalidInputError(f"{where}: annotation {a!r} is not an object; give a COCO keypoints file")
        cat = cats.get(a.get("category_id"))
        if cat is None:
            raise InvalidInputError(f"{where}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}")
        kp = a.get("keypoints")
        if not isinstance(kp, list) or len(kp) != 3 * len(cat.names):
            got = len(kp) // 3 if isinstance(kp, list) else 0
            raise InvalidInputError(
                f"{where}: annotation {a.get('id')} has {got} keypoints, its category {cat.name!r} names "
                f"{len(cat.names)} ({3 * len(cat.names)} numbers x, y, v)"
            )
        image = images.get(a.get("image_id"))
        if image is None:
            raise InvalidInputError(
                f"{where}: annotation {a.get('id')} refers to image_id {a.get('image_id')}, not in 'images'"
            )
        if not all(isinstance(v, (int, float)) and v == v for v in kp):
            raise InvalidInputError(f"{where}: annotation {a.get('id')} has keypoints that are not all numbers")
        k = torch.tensor(kp, dtype=torch.float64).float().reshape(-1, 3)
        if not bool((k[:, 2] > 0).any()):
            continue
        path = out.image_path(image)
        if check_files and not path.is_file():
            raise InvalidInputError(
                f"{where}: image {image.get('file_name')!r} not found at {path}; pass --image-root (the folder the "
                "file names are relative to)"
            )
        out.references.append(Reference(path, image, cat.id, k))
    if not out.references:
        raise InvalidInputError(f"{where}: no annotation has a labelled keypoint (v > 0); annotate at least one image")
    return out
