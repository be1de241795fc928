"""Where weights come from and go to: a name -> a model with weights (``loading``: ``load_model``,
``create_model``), the places weights live, as objects that load themselves (``sources``), the authors' release
(``release``), their checkpoint format (``convert``), saving and publishing (``publish``)."""

from ..lazy import lazy_exports

_EXPORTS = {
    "load_model": "loading",
    "create_model": "loading",
    "fetch_weights": "loading",
    "weight_sources": "sources",
    "WeightSource": "sources",
    "BaseWeights": "sources",
    "HubAdapter": "sources",
    "Release": "sources",
    "Unpublished": "sources",
    "LocalFolder": "sources",
    "HubRepo": "sources",
    "convert_checkpoint": "convert",
    "save_pretrained": "publish",
    "push_to_hub": "publish",
    "export_timm": "publish",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
