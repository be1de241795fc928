"""Following points through a video: frames of any source (``frames``) streamed through the model and the
matching core (``track``: ``track_video``, ``Tracks``)."""

from ..lazy import lazy_exports

_EXPORTS = {"Tracks": "track", "TrackSettings": "track", "track_video": "track", "iter_frames": "frames"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
