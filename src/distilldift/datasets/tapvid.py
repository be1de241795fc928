"""TAP-Vid point-tracking data (Doersch et al., NeurIPS 2022): the benchmark's pickles and a folder layout.

A pickle (TAP-Vid-DAVIS, -Kinetics shards, -RGB-Stacking) holds a dict ``name -> entry`` (or a list of entries),
each with ``video`` uint8 ``(T, H, W, 3)``, ``points`` float ``(N, T, 2)`` as ``(x, y)`` normalised so that 0 and
1 are the image's outer edges, and ``occluded`` bool ``(N, T)``. It is read with a restricted unpickler that
builds only numpy arrays, dicts, lists and numbers (``torch.load(weights_only=True)`` rejects these pickles'
protocol), so a file cannot run code.

A folder of your own annotated clips: ``ROOT/<clip>/frames/*`` (images, natural sort order) and
``ROOT/<clip>/tracks.json`` = ``{"points": [[[x, y], ...per frame], ...per track], "occluded": [[bool, ...], ...]}``
in pixels of the frames (pixel centres at integers, distilldift's convention).
"""

from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_path
from ..images import IMAGE_SUFFIXES, load_image
from .base import DatasetError

__all__ = ["TapVidVideo", "read_tapvid", "write_tapvid"]


@dataclass(frozen=True)
class TapVidVideo:
    """One clip with ground-truth tracks.

    Attributes:
        name: the clip's name.
        video: ``(T, H, W, 3)`` uint8 frames.
        points: ``(N, T, 2)`` float64 pixel ``(x, y)`` of each track in each frame (pixel centres at integers).
        occluded: ``(N, T)`` bool.
    """

    name: str
    video: np.ndarray
    points: np.ndarray
    occluded: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)``."""
        return int(self.video.shape[2]), int(self.video.shape[1])


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(
            f"tapvid: the pickle asks for the Python object {module}.{name}; only numpy arrays, dicts, lists and "
            "numbers are read (a pickle may otherwise run code)"
        )


def _entry(name: str, e: object) -> TapVidVideo:
    if not isinstance(e, dict):
        raise DatasetError(
            f"tapvid: video {name!r}: expected a dict with video, points, occluded; got {type(e).__name__}"
        )
    for key in ("video", "points", "occluded"):
        if key not in e:
            raise DatasetError(f"tapvid: video {name!r}: missing field {key!r}")
    video, points, occluded = np.asarray(e["video"]), np.asarray(e["points"]), np.asarray(e["occluded"])
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise DatasetError(
            f"tapvid: video {name!r}: field 'video' must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}"
        )
    t, h, w = video.shape[:3]
    if points.ndim != 3 or points.shape[1:] != (t, 2):
        raise DatasetError(f"tapvid: video {name!r}: field 'points' must be (N, {t}, 2), got {points.shape}")
    if occluded.shape != points.shape[:2]:
        raise DatasetError(f"tapvid: video {name!r}: field 'occluded' must be {points.shape[:2]}, got {occluded.shape}")
    if not np.isfinite(points).all():
        raise DatasetError(f"tapvid: video {name!r}: field 'points' holds NaN or inf")
    px = points.astype(np.float64) * np.array([w, h]) - 0.5  # edges at 0 and 1 -> pixel centres at integers
    return TapVidVideo(name, video, px, occluded.astype(bool))


def _natural(p: Path) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


def _clip(folder: Path) -> TapVidVideo:
    frames = sorted((f for f in (folder / "frames").glob("*") if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural)
    if not frames:
        raise DatasetError(f"tapvid: {str(folder / 'frames')!r} holds no images")
    tracks = folder / "tracks.json"
    if not tracks.exists():
        raise DatasetError(f"tapvid: missing {str(tracks)!r} (points and occluded per track and frame)")
    try:
        d = json.loads(tracks.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"tapvid: {str(tracks)!r} is not valid JSON: {e}") from None
    video = np.stack([(load_image(f).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames])
    h, w = video.shape[1:3]
    if not isinstance(d, dict) or "points" not in d or "occluded" not in d:
        raise DatasetError(f"tapvid: {str(tracks)!r} must hold 'points' and 'occluded'")
    pts = np.asarray(d["points"], dtype=np.float64)
    normalised = (pts + 0.5) / np.array([w, h]) if pts.ndim == 3 else pts
    return _entry(folder.name, {"video": video, "points": normalised, "occluded": np.asarray(d["occluded"], bool)})


def read_tapvid(path: str | Path) -> list[TapVidVideo]:
    """Clips of a TAP-Vid pickle, or of a folder of clips (see the module docstring), in name order."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"tapvid: {str(path)!r} not found (a TAP-Vid .pkl, or a folder of clips)")
    if path.is_dir():
        clips = sorted(p for p in path.iterdir() if (p / "frames").is_dir())
        if not clips:
            raise DatasetError(f"tapvid: {str(path)!r} has no clip folders (<clip>/frames/ + <clip>/tracks.json)")
        return [_clip(c) for c in clips]
    try:
        data = _ArraysOnly(io.BytesIO(path.read_bytes())).load()
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise DatasetError(f"tapvid: cannot read {str(path)!r} as a TAP-Vid pickle: {e}") from None
    if isinstance(data, list):
        data = {f"{i:04d}": e for i, e in enumerate(data)}
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"tapvid: {str(path)!r} must hold a non-empty dict of videos")
    return [_entry(str(k), data[k]) for k in sorted(data, key=str)]


def write_tapvid(path: str | Path, clips: dict[str, dict]) -> Path:
    """Write ``name -> {video, points (normalised), occluded}`` as a TAP-Vid pickle (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps({k: dict(v) for k, v in clips.items()}, protocol=4))
    return path
