"""Dense features: of images (``extract``: ``extract_features``, ``FeatureMap``, the per-image cache) and of
whole datasets (``folder``: ``extract_to_folder`` -> shards; ``store``: ``FeatureStore`` reads them back)."""

from ..lazy import lazy_exports

_EXPORTS = {
    "Features": "extract",
    "FeatureMap": "extract",
    "extract_features": "extract",
    "save_features": "extract",
    "load_features": "extract",
    "extract_to_folder": "folder",
    "FeatureStore": "store",
    "ExtractSettings": "folder",
    "extract_to_file": "folder",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
