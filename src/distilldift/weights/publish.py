"""Save and publish models: ``save_pretrained`` (a model folder, see :mod:`distilldift.models.layout`), ``export_timm``
(timm's own format) and ``push_to_hub``, with their model cards. Saving never builds or downloads anything;
building models from files is :mod:`distilldift.models.build`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import InvalidInputError
from ..files import readable_by_others
from ..models.layout import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from ..models.variants import Variant

__all__ = ["save_pretrained", "export_timm", "push_to_hub", "base_state_dict"]

# ``model`` below is a :class:`distilldift.DistillDiftModel` (typed loosely: the model module imports this one).


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own weights in timm's key format (LoRA tensors removed, peft's ``base_layer`` unwrapped).

    A merged model gives its exact pre-merge weights; the model is never modified.
    """
    out = {}
    premerge = getattr(model, "premerge_weights", {})
    for key, value in model.timm_model.state_dict().items():
        if "lora_" in key:
            continue
        value = premerge.get(key, value)
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


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike, *, save_base: bool | None = None) -> Path:
    """Write ``model`` to ``folder`` so that ``load_model(folder)`` rebuilds it exactly.

    Files: ``distilldift_config.json``, the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``)
    if any, ``model.safetensors`` with the base weights when ``save_base`` (default: when they do not come from a
    public source such as the Hub), and ``README.md``. Files are written to a temporary folder first and moved
    in place, so an interrupted save never leaves a half-written file.

    Returns:
        The folder path.

    Example:
        >>> import tempfile
        >>> from distilldift.weights import create_model, save_pretrained
        >>> from distilldift import load_model
        >>> model = create_model("distilldift_us", embed_dim=32, depth=1, num_heads=2)
        >>> folder = save_pretrained(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())[:3]
        ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
        >>> load_model(folder).variant.name
        'distilldift_us'
    """
    if getattr(model, "precision", "fp32") == "int8":
        raise InvalidInputError("an int8 model cannot be saved: save the float model; int8 is applied when loading")
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
            save_file(base_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
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


def export_timm(model: torch.nn.Module, folder: str | os.PathLike, *, repo_hint: str = "REPO_ID") -> Path:
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
    model: torch.nn.Module,
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
