"""Features of a whole dataset in a folder of shards, written resumably (and by ``torchrun`` processes), read by name.

A features folder (``distilldift extract DIR --out FEATS``)::

    run.json                                what this run is: model, settings, the image list's digest (first)
    features-00000-of-00012.safetensors     shard k: images k*S ... (k+1)*S - 1 of the sorted list, written
    ...                                     atomically in :func:`~distilldift.save_features`' format
    index.json                              the run, image name -> shard, key and geometry, unreadable images (last)

Shard k holds the same images whoever writes it, so a run killed at any moment and run again (only the missing
shards are computed) ends with the same files as one uninterrupted run, and ``torchrun --nproc_per_node P`` (process
``r`` writes shards ``r, r + P, ...``) writes the same shards as one process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, DistillDiftError, ImageLoadError, InvalidInputError, UnknownImageError
from .features import FeatureMap, resolve_model, run_concurrently, run_prepared, save_features
from .files import FEATURE_DTYPE_NAMES, atomic_path, check_distinct
from .images import IMAGE_SUFFIXES, GridGeometry, load_image
from .model import DistillDiftModel
from .progress import ProgressBar

__all__ = ["FEATURE_DTYPES", "ExtractReport", "FeatureStore", "extract_to_folder", "list_images"]

STORE_FORMAT = 1
RUN_FILE, INDEX_FILE = "run.json", "index.json"
LIST_SUFFIXES = (".txt",)
FEATURE_DTYPES = {name: getattr(torch, name) for name in FEATURE_DTYPE_NAMES}  # storage types


def list_images(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """The images of ``sources`` as ``(name, path)`` pairs, sorted by name: the names features are stored under.

    Args:
        sources: folders (every image below, recursively; name = the path relative to the folder, with ``/``),
            ``.txt`` lists (one path per line, relative to the list's folder unless absolute; blank lines and
            lines starting with ``#`` ignored; name = the line), or image files (name = the path as given).

    Raises:
        InvalidInputError: a source is missing, a folder has no images, or two images get the same name.

    Example:
        >>> import tempfile, pathlib
        >>> from distilldift.store import list_images
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "cats").mkdir(); (root / "cats" / "b.jpg").touch(); (root / "a.png").touch()
        >>> [name for name, _ in list_images(root)]
        ['a.png', 'cats/b.jpg']
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    items: dict[str, Path] = {}

    def add(name: str, path: Path) -> None:
        if name in items and items[name] != path:
            raise InvalidInputError(f"two images are both named {name!r} ({items[name]} and {path}); give one source")
        items[name] = path

    for source in sources:
        src = Path(source)
        if src.is_dir():
            found = [p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            if not found:
                raise InvalidInputError(f"folder {str(src)!r} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            for p in found:
                add(p.relative_to(src).as_posix(), p)
        elif src.suffix.lower() in LIST_SUFFIXES and src.is_file():
            lines = [s.strip() for s in src.read_text(encoding="utf-8").splitlines()]
            for line in (s for s in lines if s and not s.startswith("#")):
                p = Path(line).expanduser()
                add(line, p if p.is_absolute() else src.parent / p)
        elif src.is_file():
            add(str(source), src)
        else:
            raise InvalidInputError(f"{str(src)!r} not found: give image files, folders or .txt lists of images")
    return sorted(items.items())


@dataclass(frozen=True)
class ExtractReport:
    """What :func:`extract_to_folder` did.

    Attributes:
        folder: the features folder. images: images in the run. shards: shards in the run.
        written: shards this call computed. done_before: shards found complete (an earlier, interrupted run).
        unreadable: ``{name: reason}`` of images skipped with ``skip_bad=True`` (this call's shards).
        process, processes: this process's rank and the number of processes (``torchrun``; else 0 and 1); the
            counts above except ``images`` and ``shards`` are this process's.
    """

    folder: Path
    images: int
    shards: int
    written: int
    done_before: int
    unreadable: dict[str, str]
    process: int = 0
    processes: int = 1


class _Images(torch.utils.data.Dataset):
    """Decode + prepare one image (in a loader worker): ``(position, input | None, geometry | None, error | None)``."""

    def __init__(self, paths: Sequence[Path], prepare: Callable):
        self.paths, self.prepare = paths, prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            x, geom = self.prepare(load_image(self.paths[i]))
        except DistillDiftError as e:
            return i, None, None, str(e)
        return i, x, geom, None


def _as_list(batch: list) -> list:
    return batch


def shard_name(k: int, n: int) -> str:
    """The file name of shard ``k`` of ``n`` (0-based), e.g. ``features-00003-of-00012.safetensors``."""
    return f"features-{k:05d}-of-{n:05d}.safetensors"


def _process() -> tuple[int, int, bool]:
    """``(rank, world_size, created)``: torchrun's environment; a gloo group is created for the barriers."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), created


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _check_folder(folder: Path, run: dict) -> None:
    """Create ``folder`` or check it holds this same run (a different run is never overwritten)."""
    if not folder.exists():
        if not folder.parent.is_dir():
            raise InvalidInputError(f"--out {str(folder)!r}: folder {str(folder.parent)!r} does not exist")
        folder.mkdir()
    if not folder.is_dir():
        raise InvalidInputError(f"--out {str(folder)!r} is a file; give a folder (or a .safetensors file name)")
    run_file = folder / RUN_FILE
    if not run_file.exists():
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        if others:
            raise InvalidInputError(
                f"--out {str(folder)!r} is not empty and holds no distilldift features ({others[0]!r} ...); "
                "give a new or empty folder"
            )
        with atomic_path(run_file) as tmp:
            tmp.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
        return
    try:
        before = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(run_file)!r} is unreadable ({e}); give a new --out folder") from e
    diff = [k for k in run if before.get(k) != run[k]]
    if diff:
        k = diff[0]
        raise InvalidInputError(
            f"--out {str(folder)!r} holds features of another run ({k}: {before.get(k)!r}, this run: {run[k]!r}); "
            "rerun with that run's arguments to finish it, or give a new folder"
        )


def _shard_header(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})["distilldift"])
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for corrupt files
        raise CheckpointError(f"{str(path)!r} is not a readable features shard ({e}); delete it and rerun") from e


def _check_shard(path: Path, names: Sequence[str]) -> None:
    header = _shard_header(path)
    held = [e["image"] for e in header.get("images", [])] + list(header.get("unreadable", {}))
    if sorted(held) != sorted(names):
        raise CheckpointError(f"{str(path)!r} holds other images than this run puts there; delete it and rerun")


def extract_to_folder(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: DistillDiftModel | None = None,
    *,
    model_name: str | None = None,
    size: int | None = None,
    resize: str | None = None,
    batch_size: int | None = None,
    shard_size: int = 128,
    decoders: int | None = None,
    workers: int | None = None,
    dtype: str = "float32",
    skip_bad: bool = False,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> ExtractReport:
    """Dense features of every image of ``sources`` into the folder ``out`` (shards + index); resumable.

    Images are decoded and resized by ``decoders`` background loader processes while the model runs on batches of
    ``batch_size`` (batches never mix shards), ``workers`` batches at once. Shards already in ``out`` are kept (a
    rerun after a kill computes only the rest). Under ``torchrun`` each process writes its share of the shards
    (process ``r`` of ``P``: shards ``r, r + P, ...``; put each on its own GPU) and process 0 writes ``index.json``
    when all are done. Read the result with :class:`FeatureStore`.

    Args:
        sources: see :func:`list_images` (folders, ``.txt`` lists, image files).
        out: the features folder (created; if it exists it must be empty or hold this same run).
        model: from :func:`load_model`; default: the default variant. ``model_name``: recorded as the model
            (default: the variant's name); a rerun must give the same.
        size, resize: as in :func:`extract_features` (default: the variant's).
        batch_size: images per forward pass; default 16 on a GPU, 1 on a CPU (measured fastest there:
            ``benchmarks/bench_extract_folder.py``). shard_size: images per shard file.
        decoders: loader processes decoding images (0: decode in this process); default: one per CPU core, up to
            8 with a GPU and 2 without.
        workers: forward passes at once (:func:`~distilldift.features.run_concurrently`); default: 2 on a CPU with
            2+ torch threads (each on half of them), else 1. As in :func:`track_video`.
        dtype: storage type, one of :data:`FEATURE_DTYPES` (``"float16"`` halves the disk; reading gives float32).
        skip_bad: record unreadable images in the index and go on, instead of stopping at the first.
        progress: show a progress bar (process 0 only). callback: ``callback(images_done, images_total)`` of this
            process.

    Returns:
        :class:`ExtractReport`.

    Raises:
        ImageLoadError: an unreadable image (without ``skip_bad``); finished shards are kept, a rerun resumes.
        InvalidInputError: ``out`` holds something else, or another run's features.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> from distilldift import FeatureStore, create_model, extract_to_folder
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     Image.fromarray(np.full((40, 60, 3), 50 * i, np.uint8)).save(root / f"{i}.png")
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> report = extract_to_folder(root, root / "feats", m, size=56, shard_size=2, decoders=0)
        >>> report.images, report.shards, report.written
        (3, 2, 2)
        >>> store = FeatureStore(root / "feats")
        >>> tuple(store["2.png"].features.shape), store["2.png"].geometry.image_size
        ((32, 4, 4), (60, 40))
    """
    given = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    check_distinct([("out", out)], [("source", s) for s in given if isinstance(s, (str, os.PathLike))])
    model = resolve_model(model)
    gpu = next(model.parameters()).device.type != "cpu"
    if batch_size is None:
        batch_size = 16 if gpu else 1
    if decoders is None:
        cores = os.cpu_count() or 1
        decoders = min(8 if gpu else 2, cores)
    if workers is None:
        workers = 2 if not gpu and torch.get_num_threads() >= 2 else 1
    if min(batch_size, shard_size, workers) < 1 or decoders < 0:
        raise InvalidInputError(
            "batch_size, shard_size and workers must be >= 1 and decoders >= 0, got "
            f"{batch_size}, {shard_size}, {workers}, {decoders}"
        )
    if dtype not in FEATURE_DTYPES:
        raise InvalidInputError(f"dtype {dtype!r}: choose one of {', '.join(FEATURE_DTYPES)}")
    items = list_images(sources)
    folder = Path(out)
    size = model.variant.input_size if size is None else size
    resize = model.variant.resize if resize is None else resize
    n_shards = -(-len(items) // shard_size)
    digest = hashlib.sha256("\n".join(name for name, _ in items).encode()).hexdigest()
    run = {
        "format": STORE_FORMAT,
        "model": model_name or model.variant.name,
        "variant": model.variant.name,
        "size": size,
        "resize": resize,
        "dtype": dtype,
        "shard_size": shard_size,
        "images": len(items),
        "names_sha256": digest,
    }
    rank, world, created = _process()
    try:
        if rank == 0:
            _check_folder(folder, run)
            for stale in folder.glob(".*.tmp*"):  # what a killed run was writing
                stale.unlink(missing_ok=True)
        _barrier(world)
        if rank != 0:
            _check_folder(folder, run)
        shards = {k: items[k * shard_size : (k + 1) * shard_size] for k in range(rank, n_shards, world)}
        done = []
        for k, chunk in shards.items():
            path = folder / shard_name(k, n_shards)
            if path.exists():
                _check_shard(path, [name for name, _ in chunk])
                done.append(k)
        todo = {k: chunk for k, chunk in shards.items() if k not in done}
        prepare = functools.partial(model.prepare, size=size, resize=resize)
        loader = _loader(todo, prepare, batch_size, decoders)
        bar = ProgressBar(progress and rank == 0, len(loader.dataset), "extracting")
        try:
            unreadable = _extract_shards(model, folder, todo, n_shards, loader, workers, skip_bad, bar, callback, run)
        finally:
            bar.stop()
        _barrier(world)
        if rank == 0:
            _write_index(folder, run, n_shards)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    return ExtractReport(folder, len(items), n_shards, len(todo), len(done), unreadable, rank, world)


def _loader(todo: dict, prepare: Callable, batch_size: int, decoders: int) -> torch.utils.data.DataLoader:
    """Batches of ``(position, input, geometry, error)`` over the shards ``todo`` in order, decoded by
    ``decoders`` processes; batches never cross shards (a shard's batches are the same in every run)."""
    paths = [path for chunk in todo.values() for _, path in chunk]
    batches, start = [], 0
    for chunk in todo.values():
        end = start + len(chunk)
        batches += [list(range(i, min(i + batch_size, end))) for i in range(start, end, batch_size)]
        start = end
    return torch.utils.data.DataLoader(
        _Images(paths, prepare),
        batch_sampler=batches,
        num_workers=decoders,
        collate_fn=_as_list,
        prefetch_factor=2 if decoders else None,
    )


def _extract_shards(model, folder, todo, n_shards, loader, workers, skip_bad, bar, callback, run) -> dict[str, str]:
    """Compute and write the shards ``todo`` ({k: [(name, path)]}) in order; the unreadable images."""
    order = [(k, name) for k, chunk in todo.items() for name, _ in chunk]  # loader position -> (shard, name)

    def forward(batch: list) -> tuple[list, list]:
        good = [(i, x, g) for i, x, g, err in batch if err is None]
        return batch, run_prepared(model, [(x, g) for _, x, g in good]) if good else []

    pending: dict[int, list] = {k: [] for k in todo}  # shard -> [(name, FeatureMap | reason)]
    unreadable: dict[str, str] = {}
    done = 0
    for batch, maps in run_concurrently(loader, forward, workers=workers):
        results = iter(maps)
        for i, _, _, err in batch:
            k, name = order[i]
            if err is not None and not skip_bad:
                raise ImageLoadError(
                    f"{err} (finished shards are kept; remove or fix the image and rerun, or skip such images "
                    "with --skip-bad / skip_bad=True)"
                )
            if err is not None:
                unreadable[name] = err
            pending[k].append((name, err if err is not None else next(results)))
        for k in [k for k in pending if len(pending[k]) == len(todo[k])]:
            _write_shard(folder / shard_name(k, n_shards), k, n_shards, pending.pop(k), run)
        done += len(batch)
        bar.advance(len(batch))
        if callback is not None:
            callback(done, len(order))
    return unreadable


def _write_shard(path: Path, k: int, n: int, entries: list, run: dict) -> None:
    maps = [(name, fm) for name, fm in entries if isinstance(fm, FeatureMap)]
    bad = {name: reason for name, reason in entries if not isinstance(reason, FeatureMap)}
    save_features(
        [fm for _, fm in maps],
        path,
        names=[name for name, _ in maps],
        model=run["model"],
        dtype=FEATURE_DTYPES[run["dtype"]],
        extra={"shard": k, "shards": n, "unreadable": bad},
    )


def _write_index(folder: Path, run: dict, n_shards: int) -> None:
    images, unreadable, files = {}, {}, []
    for k in range(n_shards):
        name = shard_name(k, n_shards)
        files.append(name)
        header = _shard_header(folder / name)
        for i, e in enumerate(header["images"]):
            images[e["image"]] = [k, i, e["image_size"], e["input_size"], e["grid"]]
        unreadable.update(header.get("unreadable", {}))
    index = {
        **run,
        "shards": files,
        "unreadable": dict(sorted(unreadable.items())),
        "columns": "shard, key, image_size, input_size, grid",
        "index": dict(sorted(images.items())),
    }
    with atomic_path(folder / INDEX_FILE) as tmp:
        tmp.write_text(json.dumps(index, separators=(",", ":")) + "\n", encoding="utf-8")


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
        >>> from distilldift import FeatureStore, create_model, extract_to_folder
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (60, 40), "red").save(root / "red.png")
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> _ = extract_to_folder(root, root / "feats", m, size=56, decoders=0)
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
