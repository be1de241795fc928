"""The layout of a model folder (local or a Hugging Face repo): its file names and format version.

- ``distilldift_config.json``: the :class:`~distilldift.Variant` record (architecture, layers, input size ...);
- ``adapter_config.json`` + ``adapter_model.safetensors``: the peft LoRA adapter, if the variant has one;
- ``model.safetensors``: base backbone weights in timm's key format, when they are not fetched from elsewhere
  (``weights = "file:model.safetensors"``);
- ``README.md``: a model card.
"""

from __future__ import annotations

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "FORMAT_VERSION"]

CONFIG_NAME = "distilldift_config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1
