"""distilldift: fast semantic correspondence (DistillDIFT, WACV 2025).

>>> from distilldift import load_model, match_points
>>> model = load_model()                                      # doctest: +SKIP
>>> m = match_points("cat.jpg", "other_cat.jpg", [[120, 80]], model=model)  # doctest: +SKIP

Names are exported explicitly below and imported on first use, so ``import distilldift`` and the CLI's
``--help`` do not pay for importing torch and timm.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("distilldift")  # one source: pyproject.toml
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # models
    "DEFAULT_VARIANT": "variants",
    "LoraSpec": "variants",
    "ReleaseFile": "variants",
    "Variant": "variants",
    "get_variant": "variants",
    "list_variants": "variants",
    "register_variant": "variants",
    "DistillDiftModel": "model",
    "create_model": "loading",
    "load_model": "loading",
    "weight_sources": "loading",
    "fetch_weights": "loading",
    "WeightSource": "loading",
    "push_to_hub": "hub",
    "save_pretrained": "hub",
    "export_timm": "hub",
    "convert_checkpoint": "convert",
    # features and matching
    "Features": "features",
    "FeatureMap": "features",
    "extract_features": "features",
    "save_features": "features",
    "load_features": "features",
    "extract_to_folder": "store",
    "FeatureStore": "store",
    "GridGeometry": "images",
    "load_image": "images",
    "Matches": "matching",
    "global_similarity": "matching",
    "match_features": "matching",
    "match_points": "matching",
    "sample_features": "matching",
    "upsampled_similarity": "matching",
    "register_localizer": "matching",
    "list_localizers": "matching",
    "LocalWindow": "matching",
    "MatchSettings": "matching",
    # evaluation
    "evaluate": "evaluation",
    "EvalResult": "evaluation",
    # video
    "Tracks": "video",
    "track_video": "video",
    # drawing
    "draw_matches": "viz",
    "draw_tracks": "viz",
    "render_tracks": "viz",
    # errors
    "CheckpointError": "errors",
    "DistillDiftError": "errors",
    "DownloadError": "errors",
    "ImageLoadError": "errors",
    "InvalidInputError": "errors",
    "PointsOutsideImageError": "errors",
    "ShapeError": "errors",
    "UnknownVariantError": "errors",
    "UnknownImageError": "errors",
    "WeightsNotFoundError": "errors",
    "VideoError": "errors",
    "DatasetError": "errors",
    "MissingDependencyError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distilldift' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see ordinary imports
    from .convert import convert_checkpoint
    from .errors import (
        CheckpointError,
        DatasetError,
        DistillDiftError,
        DownloadError,
        ImageLoadError,
        InvalidInputError,
        MissingDependencyError,
        PointsOutsideImageError,
        ShapeError,
        UnknownImageError,
        UnknownVariantError,
        VideoError,
        WeightsNotFoundError,
    )
    from .evaluation import EvalResult, evaluate
    from .features import FeatureMap, Features, extract_features, load_features, save_features
    from .hub import export_timm, push_to_hub, save_pretrained
    from .images import GridGeometry, load_image
    from .loading import WeightSource, create_model, fetch_weights, load_model, weight_sources
    from .matching import (
        LocalWindow,
        Matches,
        MatchSettings,
        global_similarity,
        list_localizers,
        match_features,
        match_points,
        register_localizer,
        sample_features,
        upsampled_similarity,
    )
    from .model import DistillDiftModel
    from .store import FeatureStore, extract_to_folder
    from .variants import DEFAULT_VARIANT, LoraSpec, ReleaseFile, Variant, get_variant, list_variants, register_variant
    from .video import Tracks, track_video
    from .viz import draw_matches, draw_tracks, render_tracks
