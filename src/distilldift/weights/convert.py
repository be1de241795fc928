"""Convert the authors' released checkpoints (CompVis/distilldift) into distilldift model folders.

The authors' student is torch.hub's ``dinov2_vitb14_reg`` whose blocks' fused ``attn.qkv`` is wrapped by a LoRA
layer: the original Linear moves to ``attn.qkv.qkv.*`` and two bias-free rank-r pairs ``linear_a_q`` /
``linear_b_q`` and ``linear_a_v`` / ``linear_b_v`` add ``B_q A_q x`` to the q outputs and ``B_v A_v x`` to the
v outputs (no scaling). Checkpoints are full state dicts, keys prefixed ``model.`` (``module.model.`` under DDP).

Conversion, exact: each block's q/v pairs become one peft LoRA of rank 2r on timm's fused ``qkv`` with
``lora_alpha = 2r``: ``A = [A_q; A_v]`` and ``B`` zero except ``B_q`` (q rows, first r columns) and ``B_v`` (v rows,
last r columns). The backbone tensors go through timm's own DINOv2 checkpoint conversion.

A checkpoint may hold all of the backbone, some of it (the authors' released files are under GitHub's 100 MB limit,
so they cannot hold a float32 ViT-B: e.g. only the LoRA tensors, or those and the ``qkv`` weights their training also
updated), or none of it. The authors' own loading (``load_state_dict(strict=False)``) replaces the tensors present
and keeps DINOv2's for the rest; so does this: the tensors present replace the base weights', the others come from
the variant's base weights, and ``conversion.json`` in the output folder lists exactly which came from the file.
If the result equals the variant's public base weights, the output holds only the adapter; otherwise it also holds
``model.safetensors``. Any key not understood is an error; nothing is dropped silently. The output folder appears
only when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import safetensors.torch
import torch

from ..errors import CheckpointError, InvalidInputError, OutputError, WeightsNotFoundError, torch_load_reason
from ..files import check_distinct, readable_by_others
from ..models.build import base_weights_file, build_model
from ..models.variants import DEFAULT_VARIANT, Variant, get_variant
from .publish import base_state_dict, save_pretrained

__all__ = ["CONVERSION_NAME", "convert_checkpoint", "read_checkpoint", "read_conversion", "split_official_state_dict"]

CONVERSION_NAME = "conversion.json"  # what a converted folder took from the checkpoint

_LORA_KEY = re.compile(r"blocks\.(\d+)\.attn\.qkv\.linear_([ab])_([qv])\.weight")
_WRAPPED_QKV = re.compile(r"(blocks\.\d+\.attn\.qkv)\.qkv\.(weight|bias)")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors: ``.safetensors``, or a PyTorch file through ``torch.load(weights_only=True)``.

    A dict wrapping the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {str(p)!r}")
    try:
        if p.suffix == ".safetensors":
            sd = safetensors.torch.load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zips, bad pickles, disallowed globals ...
        raise CheckpointError(
            f"cannot read checkpoint {str(p)!r}: corrupt, truncated, or not a plain tensor checkpoint "
            f"(only tensors are loaded, with weights_only=True): {torch_load_reason(e)}"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict) and len(sd) <= 3:
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{str(p)!r} does not hold a state dict of tensors")
    return sd


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def split_official_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Split an official checkpoint into backbone tensors (DINOv2 hub keys) and per-block LoRA pairs.

    Returns:
        ``(backbone, lora)``: ``backbone`` maps DINOv2 keys (``blocks.0.attn.qkv.weight`` ...) to tensors, the
        wrapped ``qkv.qkv.*`` renamed back; ``lora[block]`` maps ``"a_q"``, ``"b_q"``, ``"a_v"``, ``"b_v"`` to
        ``A`` ``(r, C)`` / ``B`` ``(C, r)`` matrices.
    """
    backbone: dict[str, torch.Tensor] = {}
    lora: dict[int, dict[str, torch.Tensor]] = {}
    for raw, value in state_dict.items():
        key = _strip(raw)
        m = _LORA_KEY.fullmatch(key)
        if m:
            lora.setdefault(int(m.group(1)), {})[f"{m.group(2)}_{m.group(3)}"] = value
            continue
        if "linear_" in key or "lora" in key:
            raise CheckpointError(f"unknown LoRA key {raw!r}: expected blocks.N.attn.qkv.linear_(a|b)_(q|v).weight")
        m = _WRAPPED_QKV.fullmatch(key)
        key = f"{m.group(1)}.{m.group(2)}" if m else key
        if key in backbone:
            raise CheckpointError(f"checkpoint has {key!r} twice (with and without the LoRA wrapper)")
        backbone[key] = value
    for block, pairs in sorted(lora.items()):
        missing = {"a_q", "b_q", "a_v", "b_v"} - set(pairs)
        if missing:
            raise CheckpointError(f"block {block}: LoRA tensors {sorted(missing)} missing (need q and v pairs)")
    return backbone, lora


def _peft_lora_state(lora: dict[int, dict[str, torch.Tensor]], rank: int, dim: int) -> dict[str, torch.Tensor]:
    """q/v pairs -> peft ``lora_A`` ``(2r, C)`` / ``lora_B`` ``(3C, 2r)`` on the fused qkv, exactly."""
    out = {}
    for block, p in lora.items():
        for name, shape in (("a_q", (rank, dim)), ("a_v", (rank, dim)), ("b_q", (dim, rank)), ("b_v", (dim, rank))):
            if tuple(p[name].shape) != shape:
                raise CheckpointError(
                    f"block {block}: linear_{name}.weight has shape {tuple(p[name].shape)}, expected {shape} "
                    f"(LoRA rank {rank}, embed dim {dim})"
                )
        a = torch.cat([p["a_q"], p["a_v"]], dim=0).float()
        b = torch.zeros(3 * dim, 2 * rank)
        b[:dim, :rank] = p["b_q"].float()
        b[2 * dim :, rank:] = p["b_v"].float()
        prefix = f"base_model.model.blocks.{block}.attn.qkv"
        out[f"{prefix}.lora_A.weight"] = a
        out[f"{prefix}.lora_B.weight"] = b
    return out


_DINOV2_TOKENS = frozenset({"cls_token", "pos_embed", "register_tokens"})  # converted to timm's together


def _to_timm_keys(backbone: dict[str, torch.Tensor], timm_model, source: str) -> dict[str, torch.Tensor]:
    """DINOv2-hub-format tensors (all or some) in timm's keys, through timm's own checkpoint conversion."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = dict(backbone)
    tokens = _DINOV2_TOKENS & set(sd)
    if tokens and tokens != _DINOV2_TOKENS:
        raise CheckpointError(
            f"{source}: holds {sorted(tokens)} without {sorted(_DINOV2_TOKENS - tokens)}; DINOv2's class and register "
            "tokens and position embedding become timm's together (timm folds position 0 into its class token)"
        )
    if tokens and "mask_token" not in sd:
        sd["mask_token"] = torch.zeros(1)  # marks the tensors as DINOv2's for timm's converter, which drops it
    return checkpoint_filter_fn(sd, timm_model)


def _timm_tensors(model, backbone: dict[str, torch.Tensor], source: str, partial: bool) -> dict[str, torch.Tensor]:
    """``backbone`` in the model's timm keys, checked: no unknown key, every shape the model's, and (unless
    ``partial``) every base tensor present."""
    timm_model = model.timm_model
    target = {k.replace(".base_layer.", "."): v for k, v in timm_model.state_dict().items() if "lora_" not in k}
    converted = _to_timm_keys(backbone, timm_model, source)
    arch = f"this variant's architecture ({type(timm_model).__name__}, depth {len(timm_model.blocks)})"
    unexpected = sorted(set(converted) - set(target))
    missing = sorted(set(target) - set(converted))
    if unexpected:
        raise CheckpointError(f"{source}: keys not understood {unexpected[:10]}")
    for k, v in converted.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(target[k].shape)}; does it "
                f"belong to {arch}?"
            )
    if missing and not partial:
        raise CheckpointError(
            f"{source}: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}; does it belong to {arch}?"
        )
    return converted


def _load_backbone(model, backbone: dict[str, torch.Tensor], source: str, partial: bool = False) -> list[str]:
    """Load DINOv2-hub-format tensors into the timm model; ``partial``: some tensors only (the others stay as they
    are). Returns the timm keys loaded."""
    converted = _timm_tensors(model, backbone, source, partial)
    target = {k.replace(".base_layer.", "."): v for k, v in model.timm_model.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        for k, v in converted.items():
            target[k].copy_(v)
    return sorted(converted)


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str | Variant = DEFAULT_VARIANT,
    base: str | os.PathLike | None = None,
    self_contained: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """Convert an authors' checkpoint (``distilled_us`` / ``_ws`` / ``_s`` ...) into a folder ``load_model`` reads.

    Args:
        checkpoint: ``.pt`` / ``.ckpt`` / ``.bin`` (read with ``weights_only=True``) or ``.safetensors``.
        out: output folder; must not exist unless ``overwrite``. Written to a temporary folder, then renamed.
        variant: the variant it belongs to (architecture, input size, preprocessing, LoRA rank).
        base: base weights to compare against / complete the checkpoint with (DINOv2 hub format or timm), e.g. a
            local copy; default: the variant's public base weights (downloaded and cached).
        self_contained: always write the base weights too (no download needed to load the folder).
        overwrite: replace an existing ``out``.
        cache_dir, local_files_only: for downloading the variant's base weights.

    Returns:
        The output folder.

    Example:
        ``convert_checkpoint("distilled_us.ckpt", "distilldift_us")`` then ``load_model("distilldift_us")``
        (the folder) gives the authors' features exactly.
    """
    check_distinct([("out", out)], [("checkpoint", checkpoint), ("base", base)])
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    if v.lora is None or not v.lora.qv_only:
        raise InvalidInputError(f"variant {v.name!r} has no q/v LoRA adapter; pick one of the distilldift_* variants")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(
            f"output folder {str(out)!r} exists and is not empty; pass overwrite=True (--overwrite)"
        )
    backbone, lora = split_official_state_dict(read_checkpoint(checkpoint))
    if not lora:
        raise CheckpointError(f"{checkpoint}: no LoRA tensors (blocks.N.attn.qkv.linear_a_q.weight ...) found")
    rank = next(iter(lora.values()))["a_q"].shape[0]
    if rank != v.lora.rank:
        raise CheckpointError(f"{checkpoint}: LoRA rank {rank}, but variant {v.name!r} has rank {v.lora.rank}")

    bare = v.replace(weights=None, adapter=None, release=None)
    model = build_model(bare, get=None, adapter_get=None, cache_dir=None, local_files_only=True)
    base_source = None
    complete = _covers(model, backbone, f"checkpoint {checkpoint}")
    if base is not None:
        base_file = str(base)
    else:
        try:
            base_file = base_weights_file(v.weights, None, cache_dir=cache_dir, local_files_only=local_files_only)
            base_source = v.weights
        except WeightsNotFoundError as e:
            if not complete:
                raise WeightsNotFoundError(
                    f"{checkpoint} holds only part of the backbone; the rest comes from the variant's base weights, "
                    f"which are unavailable: {e} (or pass base=FILE / --base FILE)"
                ) from None
            warnings.warn(f"base weights unavailable ({e}); writing a self-contained folder", stacklevel=2)
            base_file = None
    if base_file is not None:
        _load_backbone(model, _read_base(base_file), f"base weights {base_file}")
    reference = {k: t.clone() for k, t in base_state_dict(model).items()}
    from_file = _load_backbone(model, backbone, f"checkpoint {checkpoint}", partial=True) if backbone else []

    from peft import set_peft_model_state_dict

    dim = model.timm_model.embed_dim
    result = set_peft_model_state_dict(model.backbone, _peft_lora_state(lora, rank, dim))
    if result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: LoRA for blocks the model does not have: {result.unexpected_keys[:5]}")

    changed = [k for k, t in base_state_dict(model).items() if not torch.equal(t, reference[k])]
    keep_base = self_contained or base_source is None or bool(changed)
    if changed and not self_contained and base_source is not None:
        warnings.warn(
            f"{len(changed)} base tensors differ from {base_source} (e.g. {changed[0]}): saving them too", stacklevel=2
        )
    model.variant = v.replace(weights=None if keep_base else base_source, adapter=None, release=None)
    report = {
        "checkpoint": Path(checkpoint).name,
        "lora_blocks": sorted(lora),
        "from_checkpoint": from_file,
        "from_base": None if complete else (base_source or str(base)),
        "from_base_count": len(reference) - len(from_file),
    }
    return _write_folder(model, out, keep_base, report)


def _write_folder(model, out: Path, keep_base: bool, report: dict) -> Path:
    """The model folder and its ``conversion.json``, written whole into ``out`` (replacing what was there)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise OutputError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    try:
        save_pretrained(model, tmp, save_base=keep_base)
        (tmp / CONVERSION_NAME).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        readable_by_others(tmp)  # mkdtemp makes it private (0700)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _covers(model, backbone: dict[str, torch.Tensor], source: str) -> bool:
    """Does ``backbone`` hold every base tensor of ``model``? Checks its keys and shapes before any download."""
    if not backbone:
        return False
    converted = _timm_tensors(model, backbone, source, partial=True)
    return {k.replace(".base_layer.", ".") for k in model.timm_model.state_dict() if "lora_" not in k} <= set(converted)


def read_conversion(folder: str | os.PathLike) -> dict | None:
    """The conversion record of a folder written by :func:`convert_checkpoint` (``None`` for other folders).

    Keys: ``checkpoint`` (file name), ``lora_blocks``, ``from_checkpoint`` (the timm names of the base tensors taken
    from the file), ``from_base`` (where the others came from; ``None`` when the file held them all),
    ``from_base_count``.
    """
    path = Path(folder) / CONVERSION_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_base(path: str) -> dict[str, torch.Tensor]:
    sd = read_checkpoint(path)
    return {_strip(k): v for k, v in sd.items()}
