"""CO3D v2 (Common Objects in 3D, Reizenstein et al., ICCV 2021): multi-view videos with cameras and depth.

Layout below ``root``, per category folder ``CAT/``::

    CAT/frame_annotations.jgz        gzip JSON list, one record per frame (below)
    CAT/sequence_annotations.jgz     gzip JSON list, one record per sequence (sequence_name, category, ...)
    CAT/SEQ/images/frameNNNNNN.jpg
    CAT/SEQ/depths/frameNNNNNN.jpg.geometric.png   16-bit PNG whose bits are float16 depths
    CAT/SEQ/depth_masks/frameNNNNNN.png            where the depth is valid
    CAT/SEQ/masks/frameNNNNNN.png                  foreground probability (0-255)

A frame record: ``sequence_name``, ``frame_number``, ``image`` {``path`` (relative to ``root``), ``size``
[H, W]}, ``depth`` {``path``, ``scale_adjustment``, ``mask_path``}, ``mask`` {``path``}, ``viewpoint`` {``R``,
``T``, ``focal_length``, ``principal_point``, ``intrinsics_format``}.

Cameras follow PyTorch3D's conventions: a world point ``X`` (row vector) is ``X @ R + T`` in the camera's view
space, whose +X points left, +Y up and +Z forward (into the scene); ``focal_length`` and ``principal_point`` are in
normalised device coordinates, scaled by half the image size per axis (``"ndc_norm_image_bounds"``) or by half the
shorter side on both axes (``"ndc_isotropic"``). :meth:`Co3dCamera.intrinsics` and :meth:`Co3dCamera.world_to_camera`
turn them into the usual pinhole form (OpenCV's axes: +x right, +y down, +z forward; pixel centres at integers,
distilldift's image convention). Depth is the view-space z of each pixel in the scene's own units (each sequence has
its own arbitrary scale), after multiplying the stored value by ``scale_adjustment``; 0 means unknown.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import DatasetError, require

__all__ = ["Co3dCamera", "Co3dFrame", "Co3dDataset", "read_co3d", "load_depth", "load_mask", "INTRINSICS_FORMATS"]

INTRINSICS_FORMATS = ("ndc_norm_image_bounds", "ndc_isotropic")
_FLIP = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))  # PyTorch3D view axes <-> OpenCV's


@dataclass(frozen=True)
class Co3dCamera:
    """One frame's camera, as stored in CO3D (PyTorch3D conventions, see the module docstring)."""

    R: tuple[tuple[float, float, float], ...]
    T: tuple[float, float, float]
    focal_length: tuple[float, float]
    principal_point: tuple[float, float]
    intrinsics_format: str = "ndc_norm_image_bounds"

    def __post_init__(self) -> None:
        if self.intrinsics_format not in INTRINSICS_FORMATS:
            raise DatasetError(
                f"co3d: unknown intrinsics_format {self.intrinsics_format!r}; expected one of "
                + ", ".join(INTRINSICS_FORMATS)
            )

    def _rescale(self, image_size: tuple[int, int]) -> torch.Tensor:
        half = torch.tensor(image_size, dtype=torch.float64) / 2  # (W / 2, H / 2)
        return half if self.intrinsics_format == "ndc_norm_image_bounds" else half.min().expand(2)

    def intrinsics(self, image_size: tuple[int, int]) -> torch.Tensor:
        """``(3, 3)`` float64 pinhole matrix ``K`` for an image of ``image_size = (W, H)`` pixels.

        ``u = fx * x / z + cx`` with OpenCV's camera axes and distilldift's pixels (centres at integers).

        Example:
            >>> cam = Co3dCamera(((1, 0, 0), (0, 1, 0), (0, 0, 1)), (0, 0, 0), (2.0, 2.0), (0.0, 0.0))
            >>> cam.intrinsics((200, 100)).tolist()  # ndc_norm_image_bounds: each axis by half its own size
            [[200.0, 0.0, 99.5], [0.0, 100.0, 49.5], [0.0, 0.0, 1.0]]
            >>> Co3dCamera(cam.R, cam.T, (2.0, 2.0), (0.0, 0.0), "ndc_isotropic").intrinsics((200, 100))[0, 0].item()
            100.0
        """
        s = self._rescale(image_size)
        half = torch.tensor(image_size, dtype=torch.float64) / 2
        focal = torch.tensor(self.focal_length, dtype=torch.float64) * s
        centre = half - torch.tensor(self.principal_point, dtype=torch.float64) * s  # corner-origin pixels
        k = torch.eye(3, dtype=torch.float64)
        k[0, 0], k[1, 1] = focal[0], focal[1]
        k[0, 2], k[1, 2] = centre[0] - 0.5, centre[1] - 0.5  # pixel centres at integers
        return k

    def world_to_camera(self) -> torch.Tensor:
        """``(4, 4)`` float64 map from world points to camera points (OpenCV axes), for column vectors."""
        r = torch.tensor(self.R, dtype=torch.float64)
        t = torch.tensor(self.T, dtype=torch.float64)
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = _FLIP @ r.T
        m[:3, 3] = _FLIP @ t
        return m


@dataclass(frozen=True)
class Co3dFrame:
    """One frame: its files (absolute paths; ``None`` where the annotation has none), size and camera."""

    category: str
    sequence: str
    frame_number: int
    image: Path
    image_size: tuple[int, int]  # (W, H)
    depth: Path | None
    depth_scale: float
    depth_mask: Path | None
    mask: Path | None
    camera: Co3dCamera


@dataclass
class Co3dDataset:
    """Frames of the categories read; :meth:`sequences` groups them."""

    root: Path
    frames: list[Co3dFrame]

    def __len__(self) -> int:
        return len(self.frames)

    def sequences(self) -> dict[tuple[str, str], list[Co3dFrame]]:
        """``(category, sequence) -> frames`` sorted by frame number, sequences in name order."""
        out: dict[tuple[str, str], list[Co3dFrame]] = {}
        for f in self.frames:
            out.setdefault((f.category, f.sequence), []).append(f)
        return {k: sorted(v, key=lambda f: f.frame_number) for k, v in sorted(out.items())}


def _read_jgz(path: Path) -> list:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"co3d: corrupt annotation file {str(path)!r} (expected gzip JSON): {e}") from e
    if not isinstance(data, list):
        raise DatasetError(f"co3d: {str(path)!r} must hold a JSON list of records, got {type(data).__name__}")
    return data


def _field(record: dict, path: str, where: str):
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise DatasetError(f"co3d: {where}: missing field {path!r}")
        value = value[key]
    return value


def _frame(root: Path, category: str, rec: dict, where: str) -> Co3dFrame:
    vp = _field(rec, "viewpoint", where)
    try:
        r = tuple(tuple(float(v) for v in row) for row in _field(vp, "R", where))
        t = tuple(float(v) for v in _field(vp, "T", where))
        focal = tuple(float(v) for v in _field(vp, "focal_length", where))
        pp = tuple(float(v) for v in _field(vp, "principal_point", where))
        h, w = (int(v) for v in _field(rec, "image.size", where))
    except (TypeError, ValueError) as e:
        raise DatasetError(f"co3d: {where}: malformed camera or image size ({e})") from e
    if len(r) != 3 or any(len(row) != 3 for row in r) or len(t) != 3 or len(focal) != 2 or len(pp) != 2:
        raise DatasetError(f"co3d: {where}: viewpoint needs R 3x3, T 3, focal_length 2, principal_point 2")
    camera = Co3dCamera(r, t, focal, pp, vp.get("intrinsics_format") or "ndc_norm_image_bounds")
    depth = rec.get("depth") or {}
    mask = rec.get("mask") or {}

    def path(value) -> Path | None:
        return root / value if value else None

    return Co3dFrame(
        category=category,
        sequence=str(_field(rec, "sequence_name", where)),
        frame_number=int(_field(rec, "frame_number", where)),
        image=root / _field(rec, "image.path", where),
        image_size=(w, h),
        depth=path(depth.get("path")),
        depth_scale=float(depth.get("scale_adjustment") or 1.0),
        depth_mask=path(depth.get("mask_path")),
        mask=path(mask.get("path")),
        camera=camera,
    )


def read_co3d(root: str | Path, categories: list[str] | None = None, *, need_depth: bool = True) -> Co3dDataset:
    """Read CO3D v2 annotations below ``root`` (all categories found, or ``categories``), checking the layout.

    Every frame's image must exist; with ``need_depth`` (3D training) also its depth map, depth mask and
    foreground mask. A missing file or field is a :class:`DatasetError` that names it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"co3d: root folder not found: {str(root)!r} (download CO3D v2: see recipes/co3d/README.md)")
    if categories is None:
        categories = sorted(p.parent.name for p in root.glob("*/frame_annotations.jgz"))
        if not categories:
            raise DatasetError(
                f"co3d: no category folder with a frame_annotations.jgz below {str(root)!r}; expected "
                "ROOT/CATEGORY/frame_annotations.jgz"
            )
    frames = []
    for category in categories:
        folder = require(root / category, "category folder", "co3d")
        require(folder / "sequence_annotations.jgz", "sequence annotations", "co3d")
        records = _read_jgz(require(folder / "frame_annotations.jgz", "frame annotations", "co3d"))
        for i, rec in enumerate(records):
            where = f"{category}/frame_annotations.jgz record {i}"
            if not isinstance(rec, dict):
                raise DatasetError(f"co3d: {where}: expected an object, got {type(rec).__name__}")
            frame = _frame(root, category, rec, where)
            files = [("image", frame.image)]
            if need_depth:
                files += [("depth map", frame.depth), ("depth mask", frame.depth_mask), ("foreground mask", frame.mask)]
            for what, p in files:
                if p is None:
                    raise DatasetError(f"co3d: {where}: no {what} path in the annotation")
                require(p, what, "co3d")
            frames.append(frame)
    return Co3dDataset(root, frames)


def _to_image_size(values: np.ndarray, frame: Co3dFrame, path: Path, what: str) -> np.ndarray:
    """A per-pixel map stored at another resolution than the image (CO3D's depth maps may be), resampled to the
    image's pixels by nearest neighbour, as PyTorch3D's loader does; maps of another shape are refused."""
    w, h = frame.image_size
    mh, mw = values.shape
    if (mw, mh) == (w, h):
        return values
    if abs(mw / mh - w / h) > max(1 / mh, 1 / mw) * w / h + 1e-9:
        raise DatasetError(
            f"co3d: {what} {str(path)!r} is {mw}x{mh}, not the shape of its {w}x{h} image (frame "
            f"{frame.frame_number} of {frame.sequence})"
        )
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(values))[None, None].float(), size=(h, w))
    return resized[0, 0].numpy().astype(values.dtype)


def load_depth(frame: Co3dFrame) -> torch.Tensor:
    """``(H, W)`` float32 depth at the image's size (view-space z, scene units, ``scale_adjustment`` applied; 0 where
    unknown or outside the depth mask). Depth maps and depth masks stored at another resolution (same aspect ratio)
    are resampled to the image by nearest neighbour."""
    if frame.depth is None:
        raise DatasetError(f"co3d: frame {frame.frame_number} of {frame.sequence} has no depth map")
    with Image.open(frame.depth) as im:
        raw = np.asarray(im)
    if raw.dtype not in (np.uint16, np.int32) or raw.ndim != 2:
        raise DatasetError(
            f"co3d: {str(frame.depth)!r} must be a 16-bit single-channel PNG, got {raw.dtype} {raw.shape}"
        )
    depth = raw.astype(np.uint16).view(np.float16).astype(np.float32) * frame.depth_scale
    depth[~np.isfinite(depth)] = 0
    depth = _to_image_size(depth, frame, frame.depth, "depth map")
    if frame.depth_mask is not None:
        valid = _to_image_size(load_mask(frame.depth_mask).numpy(), frame, frame.depth_mask, "depth mask")
        depth[~valid] = 0
    return torch.from_numpy(depth)


def load_mask(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(H, W)`` bool: a mask PNG above one half (foreground probability or a binary mask). With ``size = (W, H)``
    a mask of another size is an error (a foreground mask must match its image, as in PyTorch3D's loader)."""
    with Image.open(path) as im:
        if size is not None and im.size != tuple(size):
            raise DatasetError(f"co3d: mask {str(path)!r} is {im.size[0]}x{im.size[1]}, its image {size[0]}x{size[1]}")
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    return torch.from_numpy(arr > 127.5)
