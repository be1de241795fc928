"""Matching: where points of one image land in another.

``similarity`` (exact upsampled cosine similarity), ``localizers`` (``method=``, registered by name), ``search``
(exhaustive or coarse to fine; the back-match that defines *mutual* and *visible*), ``settings``
(:class:`MatchSettings`), ``points`` (``match_points`` / ``match_features``, pose-align).
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "Matches": "points",
    "match_points": "points",
    "match_features": "points",
    "MatchSettings": "settings",
    "LocalWindow": "localizers",
    "register_localizer": "localizers",
    "list_localizers": "localizers",
    "sample_features": "similarity",
    "upsampled_similarity": "similarity",
    "global_similarity": "similarity",
    "SimilarityMap": "similarity",
    "locate": "search",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
