"""TAP-Vid point-tracking data (Doersch et al., NeurIPS 2022): the benchmark's pickles and a folder layout.

As the benchmark ships (tapnet's ``tapvid/README.md``):

- TAP-Vid-DAVIS ``tapvid_davis.pkl``: a dict ``name -> clip``;
- TAP-Vid-RGB-Stacking ``tapvid_rgb_stacking.pkl``: a list of clips;
- TAP-Vid-Kinetics: a folder of shards ``0000_of_0010.pkl`` ... ``0009_of_0010.pkl`` made by tapnet's
  ``generate_tapvid.py``, each a list of clips whose ``video`` holds one JPEG file per frame (a numpy array of
  byte strings); pass the folder or one shard.

A clip holds ``video`` (uint8 ``(T, H, W, 3)``, or ``T`` encoded images as a numpy array of bytes or a list),
``points`` float ``(N, T, 2)`` as ``(x, y)`` normalised so that 0 and 1 are the image's outer edges, and
``occluded`` bool ``(N, T)``. Pickles are read with a restricted unpickler that builds only what numpy itself
writes for arrays (any pickle protocol, numpy 1 or 2), dicts, lists, strings and numbers: a file cannot run code.
Clips are read lazily, one shard in memory at a time, and encoded frames are decoded when their clip is used.

A folder of your own annotated clips: ``ROOT/<clip>/frames/*`` (images, natural sort order) and
``ROOT/<clip>/tracks.json`` = ``{"points": [[[x, y], ...per frame], ...per track], "occluded": [[bool, ...], ...]}``
in pixels of the frames (pixel centres at integers, distilldift's convention).
"""

from __future__ import annotations

import codecs
import importlib
import io
import json
import pickle
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..files import atomic_path
from ..images import IMAGE_SUFFIXES, load_image
from .base import DatasetError

__all__ = ["TapVidClips", "TapVidVideo", "read_tapvid", "write_tapvid"]


@dataclass(frozen=True)
class TapVidVideo:
    """One clip with ground-truth tracks.

    Attributes:
        name: the clip's name (a DAVIS key; ``<shard>/<index>`` for list pickles).
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


def _latin1(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for byte strings (``latin1`` only)."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise DatasetError(f"tapvid: the pickle encodes bytes as {encoding!r}; numpy writes them as 'latin1'")
    return codecs.encode(text, "latin1", errors)


def _numpy(name: str):
    """A numpy internal that array pickles name, from the installed numpy (``numpy._core`` or ``numpy.core``)."""
    for module in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{module}.{name.split('.')[0]}"), name.split(".")[1])
        except (ImportError, AttributeError):
            continue
    raise DatasetError(f"tapvid: this numpy has no {name}")


# (module, name) -> the object: everything numpy's own array/scalar/dtype pickles ask for, in numpy 1 (numpy.core) and
# numpy 2 (numpy._core) spelling and every protocol (0-2 spell bytes through _codecs.encode; 5 uses _frombuffer)
_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1,
    **{
        (f"{core}.{module}", name): (lambda n=f"{module}.{name}": _numpy(n))
        for core in ("numpy.core", "numpy._core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    },
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]()
        raise DatasetError(
            f"tapvid: the pickle asks for the Python object {module}.{name}; only numpy arrays, dicts, lists and "
            "numbers are read (a pickle may otherwise run code)"
        )


def _decode_frames(where: str, frames: Sequence) -> np.ndarray:
    """Encoded frames (JPEG/PNG bytes each) -> ``(T, H, W, 3)`` uint8."""
    out = []
    for t, data in enumerate(frames):
        if not isinstance(data, (bytes, bytearray)):
            raise DatasetError(f"{where}: field 'video' frame {t} is {type(data).__name__}, expected encoded bytes")
        try:
            with Image.open(io.BytesIO(data)) as im:
                out.append(np.asarray(im.convert("RGB")))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{where}: field 'video' frame {t} is not a decodable image: {e}") from None
        if out[-1].shape != out[0].shape:
            raise DatasetError(
                f"{where}: field 'video' frame {t} is {out[-1].shape[1::-1]}, frame 0 {out[0].shape[1::-1]}"
            )
    if not out:
        raise DatasetError(f"{where}: field 'video' holds no frames")
    return np.stack(out)


def _where(name: str, source: str) -> str:
    return f"tapvid: {source + ' ' if source else ''}video {name!r}"


def _check(name: str, e: object, source: str = "") -> None:
    """Check one raw clip's fields and shapes without decoding its frames."""
    where = _where(name, source)
    if not isinstance(e, dict):
        raise DatasetError(f"{where}: expected a dict with video, points, occluded; got {type(e).__name__}")
    for key in ("video", "points", "occluded"):
        if key not in e:
            raise DatasetError(f"{where}: missing field {key!r}")
    video, points, occluded = e["video"], np.asarray(e["points"]), np.asarray(e["occluded"])
    encoded = isinstance(video, (list, tuple)) or (
        isinstance(video, np.ndarray) and video.ndim == 1 and video.dtype.kind in ("S", "O")
    )
    if not encoded:
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise DatasetError(
                f"{where}: field 'video' must be uint8 (T, H, W, 3) or a sequence of encoded frames, "
                f"got {video.dtype} {video.shape}"
            )
    t = len(video)
    if t == 0:
        raise DatasetError(f"{where}: field 'video' holds no frames")
    if points.ndim != 3 or points.shape[1:] != (t, 2) or points.dtype.kind not in "fiu":
        raise DatasetError(f"{where}: field 'points' must be (N, {t}, 2) numbers, got {points.dtype} {points.shape}")
    if occluded.shape != points.shape[:2]:
        raise DatasetError(f"{where}: field 'occluded' must be {points.shape[:2]}, got {occluded.shape}")
    if not np.isfinite(points).all():
        raise DatasetError(f"{where}: field 'points' holds NaN or inf")


def _entry(name: str, e: object, source: str = "") -> TapVidVideo:
    """A checked clip with its frames decoded and its points in pixels."""
    _check(name, e, source)
    video = e["video"]
    if not (isinstance(video, np.ndarray) and video.ndim == 4):
        video = _decode_frames(_where(name, source), [bytes(f) if isinstance(f, np.bytes_) else f for f in video])
    h, w = video.shape[1:3]
    px = np.asarray(e["points"], dtype=np.float64) * np.array([w, h]) - 0.5  # edges at 0 and 1 -> pixel centres
    return TapVidVideo(name, video, px, np.asarray(e["occluded"]).astype(bool))


def _load_pickle(path: Path) -> dict[str, object]:
    """``name -> raw clip`` of one pickle (a dict as is; a list's entries named by position)."""
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f).load()
    except DatasetError as e:
        raise DatasetError(f"{e} (in {str(path)!r})") from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise DatasetError(f"tapvid: cannot read {str(path)!r} as a TAP-Vid pickle: {e}") from None
    if isinstance(data, (list, tuple)):
        data = {f"{i:04d}": e for i, e in enumerate(data)}
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"tapvid: {str(path)!r} must hold a non-empty dict or list of clips")
    clips = {str(k): data[k] for k in sorted(data, key=str)}
    for key, clip in clips.items():
        _check(key, clip, repr(str(path)))
    return clips


class TapVidClips(Sequence):
    """The clips of TAP-Vid pickles (one file or a folder of shards), read lazily.

    Iterating streams the shards one at a time and decodes each clip when it is reached; ``len`` and indexing read
    every shard once to count its clips. Slices are lazy views.

    Example:
        >>> import pickle, numpy as np, tempfile, pathlib
        >>> clip = {"video": np.zeros((2, 8, 8, 3), np.uint8), "points": np.full((1, 2, 2), 0.5),
        ...         "occluded": np.zeros((1, 2), bool)}
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "davis.pkl"
        >>> _ = path.write_bytes(pickle.dumps({"bear": clip}, protocol=5))
        >>> clips = read_tapvid(path)
        >>> len(clips), clips[0].name, clips[0].points[0, 0].tolist()
        (1, 'bear', [3.5, 3.5])
    """

    def __init__(self, files: Sequence[Path], keys: list[tuple[int, str]] | None = None):
        self.files = list(files)
        self._keys = keys
        self._cached: tuple[int, dict[str, object]] | None = None
        if keys is None:
            self._raw(0)  # a wrong file fails here, before any work; later shards are checked when reached

    def _raw(self, i: int) -> dict[str, object]:
        if self._cached is None or self._cached[0] != i:
            self._cached = None  # release the previous shard first
            self._cached = (i, _load_pickle(self.files[i]))
        return self._cached[1]

    def _name(self, i: int, key: str) -> str:
        return key if len(self.files) == 1 else f"{self.files[i].stem}/{key}"

    def _clip(self, i: int, key: str) -> TapVidVideo:
        return _entry(self._name(i, key), self._raw(i)[key], source=repr(str(self.files[i])))

    @property
    def keys(self) -> list[tuple[int, str]]:
        """``(file index, key)`` of every clip (reads each file once)."""
        if self._keys is None:
            self._keys = [(i, k) for i in range(len(self.files)) for k in self._raw(i)]
        return self._keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TapVidClips(self.files, self.keys[index])
        return self._clip(*self.keys[index])

    def __iter__(self) -> Iterator[TapVidVideo]:
        keys = self._keys if self._keys is not None else ((i, k) for i in range(len(self.files)) for k in self._raw(i))
        for i, key in keys:
            yield self._clip(i, key)


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


def read_tapvid(path: str | Path) -> Sequence[TapVidVideo]:
    """The clips of a TAP-Vid pickle, a folder of pickle shards (TAP-Vid-Kinetics), or a folder of clips.

    Pickles give a lazy :class:`TapVidClips` (clips in name order per file, files in name order); a folder of clip
    folders (see the module docstring) gives a list.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"tapvid: {str(path)!r} not found (a TAP-Vid .pkl, a folder of .pkl shards, or of clips)")
    if not path.is_dir():
        return TapVidClips([path])
    shards = sorted(p for p in path.glob("*.pkl") if p.is_file())
    if shards:
        return TapVidClips(shards)
    clips = sorted(p for p in path.iterdir() if (p / "frames").is_dir())
    if not clips:
        raise DatasetError(
            f"tapvid: {str(path)!r} holds neither .pkl shards (TAP-Vid-Kinetics: 0000_of_0010.pkl ...) nor clip "
            "folders (<clip>/frames/ + <clip>/tracks.json)"
        )
    return [_clip(c) for c in clips]


def write_tapvid(path: str | Path, clips: dict[str, dict]) -> Path:
    """Write ``name -> {video, points (normalised), occluded}`` as a TAP-Vid pickle (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps({k: dict(v) for k, v in clips.items()}, protocol=4))
    return path
