"""Features of a whole dataset into a folder of shards, written resumably (and by ``torchrun`` processes).

A features folder (``distilldift extract DIR --out FEATS``)::

    run.json                                what this run is: model, settings, the image list's digest (first)
    features-00000-of-00012.safetensors     shard k: images k*S ... (k+1)*S - 1 of the sorted list, written
    ...                                     atomically in :func:`~distilldift.features.save_features`' format
    index.json                              the run, image name -> shard, key and geometry, unreadable images (last)

Shard k holds the same images whoever writes it, so a run killed at any moment and run again (only the missing
shards are computed) ends with the same files as one uninterrupted run, and ``torchrun --nproc_per_node P`` (process
``r`` writes shards ``r, r + P, ...``) writes the same shards as one process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, DistillDiftError, ImageLoadError, InvalidInputError
from ..files import FEATURE_DTYPE_NAMES, atomic_path, check_distinct
from ..images import IMAGE_SUFFIXES, load_image
from ..models.model import DistillDiftModel
from ..progress import ProgressBar
from .extract import FeatureMap, extract_feature_maps, resolve_model, run_concurrently, run_prepared, save_features
from .store import INDEX_FILE, RUN_FILE

__all__ = [
    "FEATURE_DTYPES",
    "ExtractReport",
    "ExtractSettings",
    "extract_to_folder",
    "extract_to_file",
    "list_images",
    "process_device",
]

STORE_FORMAT = 1
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
        >>> from distilldift.features.folder import list_images
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


@dataclass(frozen=True)
class ExtractSettings:
    """How :func:`extract_to_folder` runs and stores, in one validated record (``None``: chosen for the device).

    Attributes:
        batch_size: images per forward pass; default 16 on a GPU, 1 on a CPU (measured fastest there:
            ``benchmarks/bench_extract_folder.py``).
        shard_size: images per shard file.
        decoders: loader processes decoding images (0: decode in this process); default: one per CPU core, up to
            8 with a GPU and 2 without.
        workers: forward passes at once (:func:`.extract.run_concurrently`); default: 2 on a CPU with 2+ torch
            threads (each on half of them), else 1. As in :func:`track_video`.
        dtype: storage type, one of :data:`FEATURE_DTYPES` (``"float16"`` halves the disk; reading gives float32).
        skip_bad: record unreadable images in the index and go on, instead of stopping at the first.

    Example:
        >>> ExtractSettings(shard_size=64).for_device(gpu=False)  # doctest: +ELLIPSIS
        ExtractSettings(batch_size=1, shard_size=64, decoders=..., workers=..., dtype='float32', skip_bad=False)
        >>> ExtractSettings(dtype="int8")
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: dtype 'int8': choose one of float32, float16, bfloat16
    """

    batch_size: int | None = None
    shard_size: int = 128
    decoders: int | None = None
    workers: int | None = None
    dtype: str = "float32"
    skip_bad: bool = False

    def __post_init__(self) -> None:
        sizes = dict(batch_size=self.batch_size, shard_size=self.shard_size, workers=self.workers)
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}")
        if self.decoders is not None and self.decoders < 0:
            raise InvalidInputError(f"decoders must be >= 0, got {self.decoders}")
        if self.dtype not in FEATURE_DTYPES:
            raise InvalidInputError(f"dtype {self.dtype!r}: choose one of {', '.join(FEATURE_DTYPES)}")

    def for_device(self, gpu: bool) -> ExtractSettings:
        """The unset (``None``) fields filled with the defaults for a GPU or a CPU run."""
        return dataclasses.replace(
            self,
            batch_size=self.batch_size or (16 if gpu else 1),
            decoders=min(8 if gpu else 2, os.cpu_count() or 1) if self.decoders is None else self.decoders,
            workers=self.workers or (2 if not gpu and torch.get_num_threads() >= 2 else 1),
        )


def process_device(device: str | None) -> str | None:
    """The device of this process: ``"cuda"`` under ``torchrun`` means this process's GPU, ``cuda:LOCAL_RANK``.

    Example:
        >>> process_device("cpu"), process_device(None)
        ('cpu', None)
    """
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    return device


def extract_to_folder(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: DistillDiftModel | None = None,
    *,
    model_name: str | None = None,
    size: int | None = None,
    resize: str | None = None,
    settings: ExtractSettings | None = None,
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
        settings: batches, shards, decoders, workers, storage type, unreadable images (:class:`ExtractSettings`).
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
        >>> from distilldift.features import ExtractSettings, FeatureStore, extract_to_folder
        >>> from distilldift.weights import create_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     Image.fromarray(np.full((40, 60, 3), 50 * i, np.uint8)).save(root / f"{i}.png")
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> how = ExtractSettings(shard_size=2, decoders=0)
        >>> report = extract_to_folder(root, root / "feats", m, size=56, settings=how)
        >>> report.images, report.shards, report.written
        (3, 2, 2)
        >>> store = FeatureStore(root / "feats")
        >>> tuple(store["2.png"].features.shape), store["2.png"].geometry.image_size
        ((32, 4, 4), (60, 40))
    """
    given = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    check_distinct([("out", out)], [("source", s) for s in given if isinstance(s, (str, os.PathLike))])
    model = resolve_model(model)
    if settings is not None and not isinstance(settings, ExtractSettings):
        raise InvalidInputError(f"settings must be an ExtractSettings, got {type(settings).__name__}")
    how = (settings or ExtractSettings()).for_device(gpu=next(model.parameters()).device.type != "cpu")
    batch_size, shard_size, decoders, workers, dtype = (
        how.batch_size,
        how.shard_size,
        how.decoders,
        how.workers,
        how.dtype,
    )
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
            unreadable = _extract_shards(
                model, folder, todo, n_shards, loader, workers, how.skip_bad, bar, callback, run
            )
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


def extract_to_file(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: DistillDiftModel | None = None,
    *,
    model_name: str | None = None,
    size: int | None = None,
    resize: str | None = None,
    batch_size: int = 1,
    dtype: str = "float32",
) -> int:
    """Dense features of every image of ``sources`` into one ``.safetensors`` file (:func:`save_features`' format):
    for small sets; a dataset goes to :func:`extract_to_folder`. Images are decoded a batch at a time; only the
    features are kept in memory. Returns the number of feature maps written.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> from distilldift.features import extract_to_file, load_features
        >>> from distilldift.weights import create_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "a.png")
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> extract_to_file(root, root / "f.safetensors", m, size=56)
        1
        >>> load_features(root / "f.safetensors")[1]["images"][0]["image"]
        'a.png'
    """
    ExtractSettings(batch_size=batch_size, dtype=dtype)  # the same checks (and messages) as a folder's
    items = [
        item
        for source in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)
        for item in list_images(source)
    ]  # files in argument order
    model = resolve_model(model)
    maps: list[FeatureMap] = []
    for start in range(0, len(items), batch_size):
        images = [load_image(path) for _, path in items[start : start + batch_size]]
        maps += extract_feature_maps(model, images, size=size, resize=resize, batch_size=batch_size)
    names = [name for name, _ in items]
    save_features(maps, out, names=names, model=model_name or model.variant.name, dtype=FEATURE_DTYPES[dtype])
    return len(maps)
