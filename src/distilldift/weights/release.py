"""The authors' released checkpoints: download once (verified by git blob id), convert once, cache the model folder.

A variant with a :class:`~distilldift.ReleaseFile` is fetched from the pinned GitHub URL, then the release's
other mirrors; or, when ``DISTILLDIFT_MIRROR`` is set, from its base URLs only (servers holding the files in the
raw-file layout ``<base>/<repo>/<commit>/<path>``, e.g. an air-gapped site's copy). The file is checked
against its git blob id, converted exactly by :func:`distilldift.weights.convert_checkpoint` into a model folder under
``<cache>/releases/`` (written atomically) and deleted; later loads read that folder with no network.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from filelock import FileLock

from ..download import cache_root, download_verified
from ..errors import CheckpointError, DownloadError, InvalidInputError, WeightsNotFoundError
from ..models.layout import CONFIG_NAME
from ..models.variants import ReleaseFile, Variant
from .convert import convert_checkpoint

__all__ = ["release_urls", "release_folder", "cached_release", "fetch_release", "MIRROR_ENV"]

MIRROR_ENV = "DISTILLDIFT_MIRROR"


def release_urls(release: ReleaseFile) -> list[str]:
    """The URLs tried for ``release``, in order: the pinned URL, then the release's mirrors.

    When ``DISTILLDIFT_MIRROR`` is set (one or more base URLs separated by spaces or commas), only
    ``<base>/<repo>/<commit>/<path>`` on each of those is tried: a site mirror replaces the public servers.

    Example:
        >>> from distilldift import get_variant
        >>> from distilldift.weights.release import release_urls
        >>> release_urls(get_variant("distilldift_ws").release)[0].split("/")[-4:]
        ['e21076e8d6f032f6ec461ce0540b496caf5a4aec', 'eval', 'checkpoints', 'distilled_ws.ckpt']
    """
    bases = [b for b in re.split(r"[\s,]+", os.environ.get(MIRROR_ENV, "")) if b]
    if bases:
        return [release.url(b) for b in bases]
    return [release.url(), *release.mirrors]


def _release(variant: Variant) -> ReleaseFile:
    if variant.release is None:
        raise InvalidInputError(f"variant {variant.name!r} has no released checkpoint")
    return variant.release


def release_folder(variant: Variant, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted model folder of ``variant``'s release lives (it may not exist yet).

    ``<cache>/releases/<variant name>-<first 12 digits of the blob id>``, with ``<cache>`` from
    :func:`distilldift.download.cache_root`.

    Example:
        >>> from distilldift import get_variant
        >>> from distilldift.weights.release import cached_release, release_folder
        >>> release_folder(get_variant("distilldift_us"), "/data/hf").as_posix()
        '/data/hf/distilldift/releases/distilldift_us-43d0aec53448'
        >>> cached_release(get_variant("distilldift_us"), "/data/hf") is None  # not downloaded there
        True
    """
    return cache_root(cache_dir) / "releases" / f"{variant.name}-{_release(variant).blob_id[:12]}"


def cached_release(variant: Variant, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The converted folder of ``variant``'s release if it is complete in the cache, else ``None``."""
    folder = release_folder(variant, cache_dir)
    return folder if (folder / CONFIG_NAME).is_file() else None


def fetch_release(
    variant: Variant,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    progress: bool = True,
) -> Path:
    """The model folder converted from ``variant``'s released checkpoint, downloading it on first use.

    Downloads are verified against the release's git blob id before the file is read (with
    ``torch.load(weights_only=True)``); processes sharing a cache wait for each other instead of downloading twice.

    Args:
        variant: a variant whose ``release`` is set.
        cache_dir: Hugging Face cache folder; the folder goes under :func:`distilldift.download.cache_root` of it.
        local_files_only: only use the cache (also ``HF_HUB_OFFLINE=1``).
        progress: show a download progress bar on stderr.

    Returns:
        The folder (``load_model(folder)`` reads it).

    Raises:
        DownloadError: every URL failed; the message names each URL and why. WeightsNotFoundError: offline and
        not cached. CheckpointError: the verified file does not convert.

    Example:
        ``fetch_release(get_variant("distilldift_us"))`` -> ``~/.cache/huggingface/distilldift/releases/
        distilldift_us-43d0aec53448`` (tested against a local server in ``tests/test_release.py``).
    """
    release = _release(variant)
    folder = release_folder(variant, cache_dir)
    if (folder / CONFIG_NAME).is_file():
        return folder
    if local_files_only:
        raise WeightsNotFoundError(f"the authors' release is not in the cache ({folder}) and offline mode is on")
    locks = cache_root(cache_dir) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{folder.name}.lock")):
        if (folder / CONFIG_NAME).is_file():  # another process finished it while we waited
            return folder
        failures = []
        for url in release_urls(release):
            scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=folder.parent))
            try:
                checkpoint = download_verified(
                    url, scratch / release.filename, blob_id=release.blob_id, progress=progress
                )
                try:
                    with warnings.catch_warnings():
                        # whether the folder keeps the base weights or fetches them from the Hub is not the
                        # user's concern here: both give the authors' features exactly
                        warnings.filterwarnings("ignore", r".*base (tensors differ|weights unavailable)", UserWarning)
                        convert_checkpoint(
                            checkpoint,
                            folder,
                            variant=variant.replace(adapter=None, release=None),
                            overwrite=True,
                            cache_dir=cache_dir,
                        )
                except (CheckpointError, InvalidInputError) as e:
                    raise CheckpointError(
                        f"{url} verified (git blob {release.blob_id}) but does not convert to {variant.name!r}: {e}"
                    ) from e
                return folder
            except DownloadError as e:
                failures.append(str(e))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    raise DownloadError("; ".join(failures))
