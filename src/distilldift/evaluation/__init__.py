"""Scores on benchmarks: PCK on image pairs (``pck``: ``evaluate``), the authors' own programs (``paper``:
``protocol="paper"``), TAP-Vid tracking metrics (``tracking``: ``evaluate_tracking``)."""

from ..lazy import lazy_exports

_EXPORTS = {"evaluate": "pck", "EvalResult": "pck", "evaluate_tracking": "tracking"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
