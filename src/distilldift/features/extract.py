"""``extract_features``: images in, L2-normalised dense feature maps and their pixel <-> grid geometry out."""

from __future__ import annotations

import json
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import CheckpointError, InvalidInputError, ShapeError
from ..images import GridGeometry, ImageInput, load_images
from ..models.model import DistillDiftModel

__all__ = [
    "ImageCache",
    "Features",
    "FeatureMap",
    "extract_features",
    "extract_feature_maps",
    "run_prepared",
    "run_concurrently",
    "resolve_model",
    "get_default_model",
    "save_features",
    "load_features",
]

_DEFAULT_MODEL: DistillDiftModel | None = None


def get_default_model() -> DistillDiftModel:
    """The process-wide default model (``load_model()`` on first use), used when ``model=None``."""
    global _DEFAULT_MODEL
    if _DEFAULT_MODEL is None:
        from ..weights.loading import load_model

        _DEFAULT_MODEL = load_model()
    return _DEFAULT_MODEL


@dataclass(frozen=True)
class Features:
    """Dense features of a batch of images.

    Attributes:
        features: ``(B, C, gh, gw)`` float32, L2-normalised over ``C``.
        geometry: one :class:`GridGeometry` per image: the exact map between its original pixels ``(x, y)`` and
            grid coordinates (``geometry[i].image_to_grid`` / ``grid_to_image``).
    """

    features: torch.Tensor
    geometry: tuple[GridGeometry, ...]

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i: int) -> Features:
        """The features of image ``i`` as a batch of one."""
        return Features(self.features[i : i + 1], (self.geometry[i],))


class FeatureMap(NamedTuple):
    """Dense features of one image and the exact pixel <-> grid map: what the extraction step gives per image.

    Attributes:
        features: ``(C, gh, gw)`` float32, L2-normalised over ``C``, on the model's device.
        geometry: the :class:`GridGeometry` mapping the original image's pixels ``(x, y)`` to grid coordinates.
    """

    features: torch.Tensor
    geometry: GridGeometry


class ImageCache:
    """The library's one feature cache: what is computed once per image (and per mirroring, model, size...) while
    cached, an LRU of ``capacity`` entries. Evaluation, the paper protocol and the demo keep features here.

    ``get(path, flipped)`` uses ``compute(path, flipped)``; ``lookup(key, make)`` any hashable key with its own
    ``make()``. ``computed`` and ``hits`` count misses and hits.

    Example:
        >>> cache = ImageCache(lambda path, flipped: (str(path), flipped), capacity=1)
        >>> cache.get("a.png"), cache.get("a.png"), cache.get("a.png", flipped=True), cache.computed, cache.hits
        (('a.png', False), ('a.png', False), ('a.png', True), 2, 1)
        >>> cache.lookup(("b", 3), lambda: "made"), cache.computed
        ('made', 3)
    """

    def __init__(self, compute: Callable[[Path, bool], object] | None, capacity: int):
        self.compute, self.capacity = compute, capacity
        self.store: OrderedDict[Hashable, object] = OrderedDict()
        self.computed = self.hits = 0

    def get(self, path: str | os.PathLike, flipped: bool = False):
        """The entry of ``path`` (mirrored with ``flipped``), computed now if it is not cached."""
        return self.lookup((str(path), flipped), lambda: self.compute(Path(path), flipped))

    def lookup(self, key: Hashable, make: Callable[[], object]):
        """The entry of ``key``, made now by ``make()`` if it is not cached."""
        if key in self.store:
            self.store.move_to_end(key)
            self.hits += 1
            return self.store[key]
        value = make()
        self.computed += 1
        self.store[key] = value
        if len(self.store) > self.capacity:
            self.store.popitem(last=False)
        return value


def resolve_model(model: DistillDiftModel | None) -> DistillDiftModel:
    """``model`` itself, or the process-wide default model for ``None``; anything else is an error.

    Example:
        >>> from distilldift.weights import create_model
        >>> from distilldift.features.extract import resolve_model
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> resolve_model(m) is m
        True
    """
    if model is None:
        return get_default_model()
    if not isinstance(model, DistillDiftModel):
        raise InvalidInputError(f"model must be a DistillDiftModel (from load_model), got {type(model).__name__}")
    return model


@torch.inference_mode()
def extract_feature_maps(
    model: DistillDiftModel,
    images: Sequence[torch.Tensor],
    *,
    size: int | None = None,
    resize: str | None = None,
    batch_size: int = 8,
    normalize: bool = True,
) -> list[FeatureMap]:
    """One :class:`FeatureMap` per image, each at its own input size (images of equal input size share a pass).

    Every image goes through ``model.prepare`` (resize + the variant's normalisation).

    Args:
        model: the model.
        images: loaded images, ``(3, H, W)`` float tensors in [0, 1] (see :func:`distilldift.load_image`).
        size, resize: as in :func:`extract_features`.
        batch_size: images per forward pass.
        normalize: ``False`` keeps the backbone's raw features (see :meth:`DistillDiftModel.forward`).

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift.features.extract import extract_feature_maps
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> fm = extract_feature_maps(m, [torch.rand(3, 60, 90), torch.rand(3, 90, 60)], size=56, resize="keep_aspect")
        >>> [tuple(f.features.shape) for f in fm], fm[0].geometry.image_size
        ([(32, 3, 4), (32, 4, 3)], (90, 60))
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    out: list[FeatureMap] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out.extend(run_prepared(model, [model.prepare(image, size, resize) for image in chunk], normalize=normalize))
    return out


@torch.inference_mode()
def run_prepared(
    model: DistillDiftModel, prepared: Sequence[tuple[torch.Tensor, GridGeometry]], *, normalize: bool = True
) -> list[FeatureMap]:
    """The model on inputs already made by ``model.prepare``: one :class:`FeatureMap` per input, in order.

    Inputs of equal input size share one forward pass (a batch of mixed sizes is split by size).

    Args:
        model: the model.
        prepared: ``(x, geometry)`` pairs from :meth:`DistillDiftModel.prepare`, ``x`` ``(3, h, w)`` normalised.
        normalize: ``False`` keeps the backbone's raw features (not L2-normalised; see
            :meth:`DistillDiftModel.forward`).

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift.features.extract import run_prepared
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> fm = run_prepared(m, [m.prepare(torch.rand(3, 60, 90), size=56), m.prepare(torch.rand(3, 9, 9), size=28)])
        >>> [tuple(f.features.shape) for f in fm]
        [(32, 4, 4), (32, 2, 2)]
    """
    p = next(model.parameters())
    out: list[FeatureMap | None] = [None] * len(prepared)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (_, geom) in enumerate(prepared):
        groups.setdefault(geom.input_size, []).append(i)
    for idx in groups.values():
        x = torch.stack([prepared[i][0] for i in idx]).to(device=p.device, dtype=p.dtype)
        feats = model(x, normalize=normalize).float()
        for j, i in enumerate(idx):
            out[i] = FeatureMap(feats[j], prepared[i][1])
    return out  # type: ignore[return-value]


def run_concurrently(items: Iterable, fn: Callable, *, workers: int = 1, threads: int | None = None) -> Iterator:
    """``fn(item)`` for each item, in order; with ``workers > 1`` that many calls run at once in threads, each on its
    share of ``threads`` torch threads (default: ``torch.get_num_threads()``).

    On a CPU a small model uses the cores better as two forward passes on half of them each than as one on all
    (``track_video`` and ``extract_to_folder`` run their forward passes through here). At most ``workers + 1``
    items are in flight; ``items`` is consumed lazily.

    Example:
        >>> from distilldift.features.extract import run_concurrently
        >>> list(run_concurrently(range(5), lambda i: i * i, workers=2))
        [0, 1, 4, 9, 16]
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    share = max(1, (threads or torch.get_num_threads()) // workers)
    with ThreadPoolExecutor(
        workers, initializer=torch.set_num_threads, initargs=(share,), thread_name_prefix="distilldift-forward"
    ) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(_inference, fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _inference(fn: Callable, item):
    with torch.inference_mode():  # per thread: a pool thread does not inherit the caller's mode
        return fn(item)


def extract_features(
    images: ImageInput | Sequence[ImageInput],
    model: DistillDiftModel | None = None,
    *,
    size: int | None = None,
    resize: str | None = None,
    batch_size: int = 8,
) -> Features:
    """Dense, L2-normalised features of one or more images.

    Args:
        images: one image or a list (path, PIL, numpy ``HxWx{1,3,4}``, tensor ``CxHxW`` in [0, 1]) or a
            ``(B, C, H, W)`` tensor.
        model: from :func:`load_model`; default: the default variant (downloaded on first use).
        size: input side (``"stretch"``) or long side (``"keep_aspect"``) in pixels; default: the variant's
            (434 for the paper's model). Rounded to a multiple of ``model.size_multiple``.
        resize: ``"stretch"`` (square input, the paper's protocol) or ``"keep_aspect"``; default: the variant's.
        batch_size: images per forward pass.

    Returns:
        :class:`Features` with ``features`` ``(B, C, gh, gw)`` on the model's device, float32, and ``geometry``
        (one per image) mapping original pixel ``(x, y)`` to grid coordinates and back.

    Raises:
        ShapeError: with ``resize="keep_aspect"``, images whose aspect ratios give different grids cannot share
            one tensor: call once per image (``match_points`` does).

    Example:
        >>> import numpy as np
        >>> from distilldift.weights import create_model
        >>> from distilldift import extract_features
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> f = extract_features(np.zeros((300, 400, 3), np.uint8), model, size=140)
        >>> tuple(f.features.shape), f.geometry[0].grid_size
        ((1, 32, 10, 10), (10, 10))
    """
    model = resolve_model(model)
    tensors = load_images(images)
    results = extract_feature_maps(model, tensors, size=size, resize=resize, batch_size=batch_size)
    shapes = {tuple(f.shape) for f, _ in results}
    if len(shapes) > 1:
        raise ShapeError(
            "features",
            "one grid size for all images (use resize='stretch', or call extract_features once per image)",
            str(sorted(shapes)),
        )
    if not results:
        raise InvalidInputError("extract_features got an empty list of images")
    return Features(torch.stack([f for f, _ in results]), tuple(g for _, g in results))


def save_features(
    maps: Sequence[FeatureMap],
    path: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    model: str = "",
    dtype: torch.dtype = torch.float32,
    extra: dict | None = None,
) -> Path:
    """Write feature maps to a ``.safetensors`` file (what ``distilldift extract`` writes); :func:`load_features`.

    Keys ``features.{i}``: ``(C, gh, gw)`` per map, in order, stored as ``dtype`` (float32, or float16 / bfloat16
    for half the disk). The metadata entry ``distilldift`` holds JSON: ``{"model": model, "images": [{"image": name,
    "image_size": [W, H], "input_size": [w, h], "grid": [gw, gh]}], **extra}`` (the exact pixel <-> grid geometry
    of each map). Written atomically; the same maps give the same bytes.

    Example:
        >>> import tempfile, torch
        >>> from distilldift.features.extract import FeatureMap, load_features, save_features
        >>> from distilldift.images import GridGeometry
        >>> fm = FeatureMap(torch.rand(8, 3, 4), GridGeometry((40, 30), (56, 42), (4, 3)))
        >>> path = save_features([fm], tempfile.mkdtemp() + "/f.safetensors", names=["a.jpg"], model="lite")
        >>> maps, meta = load_features(path)
        >>> torch.equal(maps[0].features, fm.features), maps[0].geometry == fm.geometry, meta["images"][0]["image"]
        (True, True, 'a.jpg')
    """
    from safetensors.torch import save_file

    from ..files import atomic_path, check_output

    path = check_output(path, (".safetensors",), "features file")
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(maps))]
    if len(names) != len(maps):
        raise InvalidInputError(f"names: {len(names)} names for {len(maps)} feature maps")
    tensors, meta = {}, []
    for i, (fm, name) in enumerate(zip(maps, names, strict=True)):
        g = fm.geometry
        tensors[f"features.{i}"] = fm.features.detach().to(device="cpu", dtype=dtype).contiguous()
        meta.append({"image": name, "image_size": g.image_size, "input_size": g.input_size, "grid": g.grid_size})
    header = {"model": model, "images": meta, **(extra or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"distilldift": json.dumps(header)})
    return path


def load_features(path: str | os.PathLike) -> tuple[list[FeatureMap], dict]:
    """Read a file written by :func:`save_features` / ``distilldift extract``: ``(maps, metadata)``.

    Returns:
        One :class:`FeatureMap` per image (``(C, gh, gw)`` float32 on the CPU, whatever the stored dtype, with its
        :class:`GridGeometry`), and the metadata dict (``model``, ``images``).
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"features file not found: {str(p)!r}")
    try:
        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {})["distilldift"])
            maps = []
            for i, entry in enumerate(meta["images"]):
                geom = GridGeometry(tuple(entry["image_size"]), tuple(entry["input_size"]), tuple(entry["grid"]))
                maps.append(FeatureMap(f.get_tensor(f"features.{i}").float(), geom))
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise CheckpointError(f"{str(p)!r} is not a distilldift features file (distilldift extract): {e}") from e
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for corrupt files
        raise CheckpointError(f"cannot read {str(p)!r}: corrupt or truncated ({e})") from e
    return maps, meta
