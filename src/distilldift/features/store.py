"""A features folder read back by image name: :class:`FeatureStore` (``features.folder`` writes one)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..errors import CheckpointError, InvalidInputError, UnknownImageError
from ..images import GridGeometry
from .extract import FeatureMap

__all__ = ["FeatureStore", "INDEX_FILE", "RUN_FILE"]

RUN_FILE, INDEX_FILE = "run.json", "index.json"  # a features folder: what the run is, what it holds


class FeatureStore(Mapping[str, FeatureMap]):
    """The features of a folder written by :func:`extract_to_folder` / ``distilldift extract``, by image name.

    ``store[name]`` is the image's :class:`FeatureMap` (``(C, gh, gw)`` float32 on the CPU and its exact pixel <->
    grid geometry), read from its shard on demand (memory-mapped; open shards are cached). A mapping: ``len``,
    ``in``, iteration over names (sorted), ``keys`` / ``items``.

    Attributes:
        folder: the features folder. run: the run's record (``model``, ``size``, ``resize``, ``dtype``, ...).
        unreadable: ``{name: reason}`` of the images that were skipped (``--skip-bad``).

    Raises:
        InvalidInputError: not a features folder, or an unfinished run (the message says how to finish it).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from distilldift.features import ExtractSettings, FeatureStore, extract_to_folder
        >>> from distilldift.weights import create_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (60, 40), "red").save(root / "red.png")
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> _ = extract_to_folder(root, root / "feats", m, size=56, settings=ExtractSettings(decoders=0))
        >>> store = FeatureStore(root / "feats")
        >>> list(store), store["red.png"].geometry.grid_size, store.run["size"], len(store.unreadable)
        (['red.png'], (4, 4), 56, 0)
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_file = self.folder / INDEX_FILE
        if not index_file.is_file():
            if (self.folder / RUN_FILE).is_file():
                k = len(list(self.folder.glob("features-*-of-*.safetensors")))
                raise InvalidInputError(
                    f"{str(self.folder)!r} is an unfinished extraction ({k} shards written, no {INDEX_FILE}): "
                    "rerun the same `distilldift extract` command to finish it"
                )
            raise InvalidInputError(f"{str(self.folder)!r} is not a features folder (distilldift extract --out)")
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            self._shards: list[str] = index.pop("shards")
            self._images: dict[str, list] = index.pop("index")
            self.unreadable: dict[str, str] = index.pop("unreadable")
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{str(index_file)!r} is unreadable ({e}); rerun distilldift extract") from e
        index.pop("columns", None)
        self.run = index
        self._open = functools.lru_cache(maxsize=8)(self._open_shard)

    def _open_shard(self, k: int):
        from safetensors import safe_open

        path = self.folder / self._shards[k]
        if not path.is_file():
            raise CheckpointError(f"shard {str(path)!r} is missing; rerun distilldift extract to write it again")
        return safe_open(str(path), "pt")

    def __getitem__(self, name: str) -> FeatureMap:
        entry = self._images.get(name)
        if entry is None:
            why = f"it could not be read: {self.unreadable[name]}" if name in self.unreadable else "no such image"
            raise UnknownImageError(f"{name!r} is not in {str(self.folder)!r} ({why})")
        k, i, image_size, input_size, grid = entry
        features = self._open(k).get_tensor(f"features.{i}").float()
        return FeatureMap(features, GridGeometry(tuple(image_size), tuple(input_size), tuple(grid)))

    def __contains__(self, name: object) -> bool:
        return name in self._images

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, {len(self)} images, model={self.run.get('model')!r})"
