"""Teacher feature cache: teachers run once over the training images; training reads only the cache.

Layout of a cache folder::

    index.json                     # config (teacher, grid, channels, image list) + the finished shards
    shard-00000.safetensors        # "features": (n, C, gh, gw) float16, images [start, start + n)
    ...

Each shard is written to a temporary file and renamed, then recorded in ``index.json`` (also replaced
atomically). An interrupted build leaves only finished shards; running it again computes the rest.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InvalidInputError
from ..files import atomic_path
from ..images import load_image
from .teachers import Teacher

__all__ = ["build_teacher_cache", "TeacherCache"]

INDEX = "index.json"


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")


def build_teacher_cache(
    teacher: Teacher,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    categories: Sequence[str] | None = None,
    batch_size: int = 8,
    shard_size: int = 256,
    loader: Callable[[str], torch.Tensor] | None = None,
    progress: bool = False,
) -> Path:
    """Run ``teacher`` over ``images`` and store its features as fp16 shards in ``out`` (resumable).

    Args:
        teacher: the teacher (ensemble).
        images: image paths; their order defines the cache's indices.
        out: cache folder.
        grid: ``(gw, gh)`` student grid the features are resampled to.
        image_size: ``(W, H)`` every image is resized to before the teacher (the training input).
        categories: per-image category for text-conditioned teachers.
        batch_size: images per teacher call; shard_size: images per file.
        loader: ``path -> (3, H, W)`` [0, 1] tensor (default: :func:`distilldift.load_image`).

    Returns:
        The cache folder. Re-running with the same arguments after an interruption computes only missing shards;
        different arguments on an existing cache are an error (use a new folder).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "version": 1,
        "teacher": teacher.name,
        "channels": teacher.channels,
        "grid": list(grid),
        "image_size": list(image_size),
        "dtype": "float16",
        "shard_size": shard_size,
        "images": [str(p) for p in images],
        "categories": list(categories) if categories is not None else None,
    }
    index_path = out / INDEX
    shards: list[dict] = []
    if index_path.exists():
        old = json.loads(index_path.read_text(encoding="utf-8"))
        old_config = {k: v for k, v in old.items() if k != "shards"}
        if old_config != config:
            changed = sorted(k for k in config if old_config.get(k) != config[k])
            raise InvalidInputError(f"cache {str(out)!r} was built with other settings ({changed}); use a new folder")
        shards = [s for s in old["shards"] if (out / s["file"]).exists()]
    done = {s["start"] for s in shards}
    load = loader or load_image
    todo = [start for start in range(0, len(images), shard_size) if start not in done]
    for start in todo:
        stop = min(start + shard_size, len(images))
        parts = []
        for b in range(start, stop, batch_size):
            idx = range(b, min(b + batch_size, stop))
            batch = torch.stack([_resize(load(str(images[i])), image_size) for i in idx])
            cats = [categories[i] for i in idx] if categories is not None else None
            feats = teacher(batch, grid, cats)
            parts.append(feats.to("cpu", torch.float16).contiguous())
        name = f"shard-{start // shard_size:05d}.safetensors"
        with atomic_path(out / name) as tmp:
            save_file({"features": torch.cat(parts)}, str(tmp))
        shards.append({"file": name, "start": start, "count": stop - start})
        _write_json(index_path, {**config, "shards": sorted(shards, key=lambda s: s["start"])})
        if progress:
            print(f"teacher cache: {stop}/{len(images)} images")
    if not index_path.exists():  # no images at all
        _write_json(index_path, {**config, "shards": []})
    return out


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    w, h = size
    if image.shape[-2:] == (h, w):
        return image
    return torch.nn.functional.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True)[0]


class TeacherCache:
    """Read a finished cache: ``cache[i]`` -> ``(C, gh, gw)`` float32 features of image ``i`` (memory-mapped)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.exists():
            raise InvalidInputError(f"{str(self.folder)!r} is not a teacher cache (no {INDEX}); build it first")
        self.index = json.loads(index.read_text(encoding="utf-8"))
        self.images: list[str] = self.index["images"]
        covered = sum(s["count"] for s in self.index["shards"])
        if covered != len(self.images):
            raise InvalidInputError(
                f"teacher cache {str(self.folder)!r} is incomplete ({covered}/{len(self.images)} images): "
                "run the cache build again to finish it"
            )
        self._shards = sorted((s["start"], s["count"], s["file"]) for s in self.index["shards"])
        self._starts = [start for start, _, _ in self._shards]
        self._open: dict[str, object] = {}  # memory-mapped shard handles, opened on first use

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self.images):
            raise IndexError(f"image index {i} out of range for a cache of {len(self.images)}")
        start, _, file = self._shards[bisect.bisect_right(self._starts, i) - 1]
        if file not in self._open:
            self._open[file] = safe_open(str(self.folder / file), "pt")
        return self._open[file].get_slice("features")[i - start : i - start + 1][0].float()
