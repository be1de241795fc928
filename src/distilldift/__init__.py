"""distilldift: fast semantic correspondence (DistillDIFT, WACV 2025).

>>> from distilldift import load_model, match_points
>>> model = load_model()                                      # doctest: +SKIP
>>> m = match_points("cat.jpg", "other_cat.jpg", [[120, 80]], model=model)  # doctest: +SKIP

The top level holds the verbs and what they take and return; everything else is public in its subpackage
(``distilldift.models``, ``.weights``, ``.features``, ``.matching``, ``.tracking``, ``.evaluation``, ``.export``,
``.training``, ``.datasets``, ``.labelling``) and ``distilldift.errors``. Names are imported on first use, so
``import distilldift`` and the CLI's ``--help`` do not pay for importing torch and timm.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from .lazy import lazy_exports

try:
    __version__ = version("distilldift")  # one source: pyproject.toml
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # the verbs
    "load_model": "weights.loading",
    "extract_features": "features.extract",
    "match_points": "matching.points",
    "match_features": "matching.points",
    "track_video": "tracking.track",
    "evaluate": "evaluation.pck",
    "label_keypoints": "labelling.label",
    # what they take and return
    "DistillDiftModel": "models.model",
    "Features": "features.extract",
    "FeatureMap": "features.extract",
    "Matches": "matching.points",
    "MatchSettings": "matching.settings",
    "Tracks": "tracking.track",
    "TrackSettings": "tracking.track",
    "EvalResult": "evaluation.pck",
    "load_image": "images",
    # the variant registry
    "Variant": "models.variants",
    "get_variant": "models.variants",
    "list_variants": "models.variants",
    "register_variant": "models.variants",
    # drawing
    "draw_matches": "viz",
    "draw_tracks": "viz",
    "render_tracks": "viz",
    # every error a user can cause derives from this one (the others: distilldift.errors)
    "DistillDiftError": "errors",
}

__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see ordinary imports
    from .errors import DistillDiftError
    from .evaluation.pck import EvalResult, evaluate
    from .features.extract import FeatureMap, Features, extract_features
    from .images import load_image
    from .labelling.label import label_keypoints
    from .matching.points import Matches, match_features, match_points
    from .matching.settings import MatchSettings
    from .models.model import DistillDiftModel
    from .models.variants import Variant, get_variant, list_variants, register_variant
    from .tracking.track import Tracks, TrackSettings, track_video
    from .viz import draw_matches, draw_tracks, render_tracks
    from .weights.loading import load_model
