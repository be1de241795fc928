"""distilldift: fast semantic correspondence (DistillDIFT, WACV 2025).

>>> from distilldift import load_model, match_points
>>> model = load_model()                                      # doctest: +SKIP
>>> m = match_points("cat.jpg", "other_cat.jpg", [[120, 80]], model=model)  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from .errors import (
    CheckpointError,
    DistillDiftError,
    ImageLoadError,
    InvalidInputError,
    PointsOutsideImageError,
    ShapeError,
    UnknownVariantError,
    WeightsNotFoundError,
)
from .features import Features, extract_features
from .hub import create_model, load_model, push_to_hub, save_pretrained
from .images import GridGeometry, load_image
from .matching import Matches, global_similarity, match_features, match_points, sample_features, upsampled_similarity
from .model import DistillDiftModel
from .variants import DEFAULT_VARIANT, LoraSpec, Variant, get_variant, list_variants, register_variant
from .viz import draw_matches

__all__ = [
    "__version__",
    # models
    "DEFAULT_VARIANT",
    "DistillDiftModel",
    "LoraSpec",
    "Variant",
    "create_model",
    "get_variant",
    "list_variants",
    "load_model",
    "push_to_hub",
    "register_variant",
    "save_pretrained",
    # features and matching
    "Features",
    "GridGeometry",
    "Matches",
    "extract_features",
    "global_similarity",
    "load_image",
    "match_features",
    "match_points",
    "sample_features",
    "upsampled_similarity",
    # drawing
    "draw_matches",
    # errors
    "CheckpointError",
    "DistillDiftError",
    "ImageLoadError",
    "InvalidInputError",
    "PointsOutsideImageError",
    "ShapeError",
    "UnknownVariantError",
    "WeightsNotFoundError",
]
